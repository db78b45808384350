//! The bundled models and their data, embedded in the binary: a registry by
//! name. Each model comes with the test set and the calibration set of the
//! dataset it was trained on (IDX, gzip; preprocessing `pixel / 255`).

/// One bundled model.
pub struct Bundled {
    /// The name `--model` takes.
    pub name: &'static str,
    /// What it is, for `--help` and reports.
    pub about: &'static str,
    /// The ONNX bytes.
    pub onnx: &'static [u8],
    /// The dataset it was trained on.
    pub dataset: &'static str,
    /// Test images (IDX, gzip).
    pub test_images: &'static [u8],
    /// Test labels (IDX, gzip).
    pub test_labels: &'static [u8],
    /// Calibration images: the first 512 training images (IDX, gzip).
    pub calib_images: &'static [u8],
}

macro_rules! data {
    ($dir:literal, $file:literal) => {
        include_bytes!(concat!("../../../data/", $dir, "/", $file))
    };
}

const MNIST: (&[u8], &[u8], &[u8]) = (
    data!("mnist", "t10k-images-idx3-ubyte.gz"),
    data!("mnist", "t10k-labels-idx1-ubyte.gz"),
    data!("mnist", "calib-images-idx3-ubyte.gz"),
);

const FASHION: (&[u8], &[u8], &[u8]) = (
    data!("fashion", "t10k-images-idx3-ubyte.gz"),
    data!("fashion", "t10k-labels-idx1-ubyte.gz"),
    data!("fashion", "calib-images-idx3-ubyte.gz"),
);

/// Every bundled model.
pub const ALL: &[Bundled] = &[
    Bundled {
        name: "mnist",
        about: "MNIST CNN: Conv, BatchNorm, ReLU, MaxPool, Conv, AvgPool, two Gemm",
        onnx: include_bytes!("../../../models/mnist.onnx"),
        dataset: "MNIST",
        test_images: MNIST.0,
        test_labels: MNIST.1,
        calib_images: MNIST.2,
    },
    Bundled {
        name: "e2dm",
        about: "the TenSEAL/E2DM MNIST net with ReLU",
        onnx: include_bytes!("../../../models/e2dm.onnx"),
        dataset: "MNIST",
        test_images: MNIST.0,
        test_labels: MNIST.1,
        calib_images: MNIST.2,
    },
    Bundled {
        name: "resnet20",
        about: "ResNet-20 (3 stages x 3 basic blocks, 16/32/64 channels, BatchNorm, residual adds, 1x1 projections) on Fashion-MNIST",
        onnx: include_bytes!("../../../models/resnet20.onnx"),
        dataset: "Fashion-MNIST",
        test_images: FASHION.0,
        test_labels: FASHION.1,
        calib_images: FASHION.2,
    },
    Bundled {
        name: "mobilenet",
        about: "a small MobileNet (depthwise-separable blocks with ReLU6) on Fashion-MNIST",
        onnx: include_bytes!("../../../models/mobilenet.onnx"),
        dataset: "Fashion-MNIST",
        test_images: FASHION.0,
        test_labels: FASHION.1,
        calib_images: FASHION.2,
    },
];

/// The bundled model called `name`.
pub fn find(name: &str) -> Option<&'static Bundled> {
    ALL.iter().find(|b| b.name == name)
}

/// The names of every bundled model, for messages.
pub fn names() -> String {
    ALL.iter().map(|b| b.name).collect::<Vec<_>>().join(", ")
}
