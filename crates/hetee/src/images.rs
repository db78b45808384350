//! Image inputs: a PNG or JPEG file, or a folder of them (read in sorted
//! file-name order), decoded and preprocessed ([`Preprocess`]) into the
//! float32 batch `[N, C, H, W]` (or `[N, H, W, C]`, or `[N, F]` for a
//! flat input) that a `.npy` input gives.

mod spec;

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use image::{DynamicImage, ImageBuffer, Pixel};

pub use spec::{Channels, Layout, Preprocess, Scale, Size, MAX_SPEC_LEN};

use crate::data::Tensor;

/// Why image inputs cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The preprocessing spec is malformed.
    #[error("preprocessing spec: {0}")]
    Spec(String),
    /// The spec or an image cannot be made to fit the model input.
    #[error("{0}")]
    Shape(String),
    /// A file is not a PNG or JPEG that decodes.
    #[error("{file} is not a readable PNG or JPEG image: {reason}")]
    Decode {
        /// The file.
        file: PathBuf,
        /// The decoder's reason.
        reason: String,
    },
    /// A file or folder cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A folder holds no `.png`, `.jpg` or `.jpeg` file.
    #[error("{0} holds no .png, .jpg or .jpeg file")]
    Empty(PathBuf),
}

/// Images decoded into a batch, with the file names in batch order.
#[derive(Debug, Clone)]
pub struct Images {
    /// The file names (a folder's entries, sorted), one per sample.
    pub files: Vec<String>,
    /// The batch.
    pub tensor: Tensor,
}

fn is_image_name(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

/// Whether `path` names image input (a folder, or a `.png`/`.jpg`/`.jpeg`
/// file) rather than a `.npy` array.
pub fn is_image_input(path: &Path) -> bool {
    path.is_dir() || is_image_name(path)
}

/// The files of an image input: the file itself, or a folder's image files
/// sorted by name (other files are skipped).
pub fn image_files(path: &Path) -> Result<Vec<PathBuf>, ImageError> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let read = |source| ImageError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(read)? {
        let p = entry.map_err(read)?.path();
        if p.is_file() && is_image_name(&p) {
            files.push(p);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    if files.is_empty() {
        return Err(ImageError::Empty(path.to_path_buf()));
    }
    Ok(files)
}

/// One sample's geometry, from the spec and the model input shape.
#[derive(Debug, Clone, Copy)]
struct Target {
    channels: Channels,
    width: u32,
    height: u32,
    /// Resize images of another size (the spec gives a size).
    resize: bool,
}

fn shape_text(s: &[usize]) -> String {
    let d: Vec<String> = s.iter().map(usize::to_string).collect();
    format!("[{}]", d.join(", "))
}

fn channels_of(c: usize, spec: &Preprocess, input: &[usize]) -> Result<Channels, ImageError> {
    let from_model = match c {
        1 => Some(Channels::Gray),
        3 => Some(Channels::Rgb),
        _ => None,
    };
    match (spec.channels, from_model) {
        (Some(s), Some(m)) if s == m => Ok(s),
        (None, Some(m)) => Ok(m),
        (Some(s), _) => Err(ImageError::Shape(format!(
            "the preprocessing gives {} channel(s) (channels={s}), but the model input {} has {c}",
            s.count(),
            shape_text(input)
        ))),
        (None, None) => Err(ImageError::Shape(format!(
            "the model input {} has {c} channels; images give 1 (gray) or 3 (rgb)",
            shape_text(input)
        ))),
    }
}

impl Target {
    fn of(spec: &Preprocess, input: &[usize]) -> Result<Self, ImageError> {
        let (c, h, w) = match (spec.layout, input) {
            (Layout::Nchw, &[c, h, w]) => (c, h, w),
            (Layout::Nhwc, &[h, w, c]) => (c, h, w),
            (_, &[f]) => {
                // A flat input: the spec must say the size.
                let Some(size) = spec.size else {
                    return Err(ImageError::Shape(format!(
                        "the model takes flat samples {}: give the image size in the \
                         preprocessing (size=WxH)",
                        shape_text(input)
                    )));
                };
                let ch = spec.channels.unwrap_or(Channels::Gray);
                let n = ch.count() * size.width as usize * size.height as usize;
                if n != f {
                    return Err(ImageError::Shape(format!(
                        "the preprocessing gives {n} values per image ({}x{}, {ch}), but the \
                         model takes {f}",
                        size.width, size.height
                    )));
                }
                return Ok(Target {
                    channels: ch,
                    width: size.width,
                    height: size.height,
                    resize: true,
                });
            }
            _ => {
                return Err(ImageError::Shape(format!(
                    "the model input {} is not an image ({} layout); pass a .npy array",
                    shape_text(input),
                    match spec.layout {
                        Layout::Nchw => "[C, H, W] in NCHW",
                        Layout::Nhwc => "[H, W, C] in NHWC",
                    }
                )))
            }
        };
        let channels = channels_of(c, spec, input)?;
        if let Some(s) = spec.size {
            if (s.width as usize, s.height as usize) != (w, h) {
                return Err(ImageError::Shape(format!(
                    "the preprocessing resizes to {}x{}, but the model input {} takes {w}x{h} \
                     (width x height)",
                    s.width,
                    s.height,
                    shape_text(input)
                )));
            }
        }
        Ok(Target {
            channels,
            width: w as u32,
            height: h as u32,
            resize: spec.size.is_some(),
        })
    }
}

/// Checks that `spec` can make images fit a model whose one sample has
/// shape `input` (before any image is read).
pub fn check_fits(spec: &Preprocess, input: &[usize]) -> Result<(), ImageError> {
    spec.validate()?;
    Target::of(spec, input).map(|_| ())
}

/// Resizes if asked, else checks the size; returns the pixels, row-major,
/// channels interleaved.
fn fit<P: Pixel<Subpixel = u8> + 'static>(
    img: ImageBuffer<P, Vec<u8>>,
    t: &Target,
    file: &Path,
) -> Result<Vec<u8>, ImageError> {
    if img.dimensions() == (t.width, t.height) {
        return Ok(img.into_raw());
    }
    if !t.resize {
        return Err(ImageError::Shape(format!(
            "{} is {}x{}, but the model takes {}x{}; add size={}x{} to the preprocessing to \
             resize",
            file.display(),
            img.width(),
            img.height(),
            t.width,
            t.height,
            t.width,
            t.height
        )));
    }
    Ok(image::imageops::resize(&img, t.width, t.height, FilterType::Triangle).into_raw())
}

/// Decodes one image and preprocesses it into one sample, appended to `out`.
fn sample(
    file: &Path,
    spec: &Preprocess,
    t: &Target,
    out: &mut Vec<f32>,
) -> Result<(), ImageError> {
    let bytes = std::fs::read(file).map_err(|source| ImageError::Read {
        path: file.to_path_buf(),
        source,
    })?;
    let img: DynamicImage = image::load_from_memory(&bytes).map_err(|e| ImageError::Decode {
        file: file.to_path_buf(),
        reason: e.to_string(),
    })?;
    let px = match t.channels {
        Channels::Gray => fit(img.to_luma8(), t, file)?,
        Channels::Rgb => fit(img.to_rgb8(), t, file)?,
    };
    let c = t.channels.count();
    let pick = |v: &[f32], k: usize| if v.len() == 1 { v[0] } else { v[k] };
    let value = |p: u8, k: usize| {
        let v = p as f32 * spec.scale.mul / spec.scale.div;
        (v - pick(&spec.mean, k)) / pick(&spec.std, k)
    };
    match spec.layout {
        Layout::Nhwc => out.extend(px.iter().enumerate().map(|(i, &p)| value(p, i % c))),
        Layout::Nchw => {
            for k in 0..c {
                out.extend(px.iter().skip(k).step_by(c).map(|&p| value(p, k)));
            }
        }
    }
    Ok(())
}

/// Reads the image input at `path` (a file or a folder) and preprocesses it
/// with `spec` for a model whose one sample has shape `input`.
pub fn load_images(path: &Path, spec: &Preprocess, input: &[usize]) -> Result<Images, ImageError> {
    spec.validate()?;
    let t = Target::of(spec, input)?;
    let files = image_files(path)?;
    let mut data = Vec::new();
    for f in &files {
        sample(f, spec, &t, &mut data)?;
    }
    let mut shape = vec![files.len()];
    shape.extend(input);
    Ok(Images {
        files: files
            .iter()
            .map(|f| {
                f.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .collect(),
        tensor: Tensor { shape, data },
    })
}

/// An input file's batch: a `.npy` array, or images preprocessed with
/// `spec` (default [`Preprocess::default`]) for one sample of shape `input`.
/// Returns the batch and, for images, the file names in batch order.
pub fn read_input(
    path: &Path,
    spec: Option<&Preprocess>,
    input: &[usize],
) -> anyhow::Result<(Tensor, Option<Vec<String>>)> {
    use anyhow::Context;
    if !is_image_input(path) {
        return Ok((crate::data::read_npy(path).context("input")?, None));
    }
    let default = Preprocess::default();
    let images = load_images(path, spec.unwrap_or(&default), input)?;
    Ok((images.tensor, Some(images.files)))
}
