//! Image files made inside a test from real MNIST test images (written with
//! the `image` crate), for the image-input tests.

use std::path::Path;

use image::{GrayImage, ImageFormat};

/// Writes the first `names.len()` MNIST test images into `dir` as
/// `names[i]` (the format from the extension: `.png` or `.jpg`). Returns
/// the names sorted: the order `hetee` reads the folder in, with
/// `order[k]` the MNIST index of the k-th sorted file.
pub fn write_mnist(dir: &Path, names: &[&str]) -> (Vec<String>, Vec<usize>) {
    std::fs::create_dir_all(dir).unwrap();
    let px = super::mnist_pixels(names.len());
    for (i, name) in names.iter().enumerate() {
        let img = GrayImage::from_raw(28, 28, px[i * 784..(i + 1) * 784].to_vec()).unwrap();
        let format = ImageFormat::from_path(name).unwrap();
        img.save_with_format(dir.join(name), format).unwrap();
    }
    let mut order: Vec<usize> = (0..names.len()).collect();
    order.sort_by_key(|&i| names[i]);
    (order.iter().map(|&i| names[i].to_string()).collect(), order)
}

/// The MNIST images `order` (indices), scaled to [0, 1], as a float32
/// `.npy` `[N, 1, 28, 28]`: what the PNGs of [`write_mnist`] decode to.
pub fn write_npy_of(path: &Path, order: &[usize]) {
    let n = order.iter().max().map_or(0, |m| m + 1);
    let all = super::mnist_images(n);
    let data: Vec<f32> = order
        .iter()
        .flat_map(|&i| all[i * 784..(i + 1) * 784].iter().copied())
        .collect();
    super::write_f32(path, &[order.len(), 1, 28, 28], &data);
}
