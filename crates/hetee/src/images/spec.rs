//! The preprocessing spec of image inputs: target size, channels, scale,
//! per-channel mean and std, layout. Written as
//! `size=28x28,channels=gray,scale=1/255,mean=0.1307,std=0.3081,layout=nchw`
//! (every field optional; lists of per-channel values separated by `:`)
//! or as the JSON of [`Preprocess`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::ImageError;

/// Longest spec text accepted (the server keeps it as public metadata).
pub const MAX_SPEC_LEN: usize = 1024;

/// Pixel channels fed to the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channels {
    /// One channel: luma of the decoded image.
    Gray,
    /// Three channels, red, green, blue (alpha dropped).
    Rgb,
}

impl Channels {
    /// 1 or 3.
    pub fn count(self) -> usize {
        match self {
            Channels::Gray => 1,
            Channels::Rgb => 3,
        }
    }
}

/// How one sample's values are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// `[C, H, W]`, what `.npy` inputs of image models hold.
    #[default]
    Nchw,
    /// `[H, W, C]`, for models whose input is channels-last.
    Nhwc,
}

/// Width and height in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Size {
    /// Columns.
    pub width: u32,
    /// Rows.
    pub height: u32,
}

/// A pixel value `p` (0–255) becomes `p * mul / div` before the mean and
/// std: `1/255` keeps the exact `p / 255` the bundled models were trained on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Scale {
    /// Multiplier.
    pub mul: f32,
    /// Divisor.
    pub div: f32,
}

/// How PNG and JPEG files become the float32 model input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    /// Resize every image to this size (bilinear); `None`: images must
    /// already have the model's size.
    #[serde(default)]
    pub size: Option<Size>,
    /// Channels; `None`: what the model input has (1 gray, 3 rgb).
    #[serde(default)]
    pub channels: Option<Channels>,
    /// Pixel scale (default `1/255`).
    #[serde(default = "default_scale")]
    pub scale: Scale,
    /// Subtracted after scaling: one value, or one per channel (default 0).
    #[serde(default = "zero")]
    pub mean: Vec<f32>,
    /// Divides after the mean: one value, or one per channel (default 1).
    #[serde(default = "one")]
    pub std: Vec<f32>,
    /// Sample layout (default NCHW).
    #[serde(default)]
    pub layout: Layout,
}

fn default_scale() -> Scale {
    Scale {
        mul: 1.0,
        div: 255.0,
    }
}
fn zero() -> Vec<f32> {
    vec![0.0]
}
fn one() -> Vec<f32> {
    vec![1.0]
}

impl Default for Preprocess {
    fn default() -> Self {
        Preprocess {
            size: None,
            channels: None,
            scale: default_scale(),
            mean: zero(),
            std: one(),
            layout: Layout::Nchw,
        }
    }
}

fn bad(msg: impl Into<String>) -> ImageError {
    ImageError::Spec(msg.into())
}

fn number(key: &str, s: &str) -> Result<f32, ImageError> {
    s.trim()
        .parse::<f32>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| bad(format!("{key}={s}: {s:?} is not a finite number")))
}

fn list(key: &str, s: &str) -> Result<Vec<f32>, ImageError> {
    let v = s
        .split(':')
        .map(|x| number(key, x))
        .collect::<Result<Vec<_>, _>>()?;
    if v.len() != 1 && v.len() != 3 {
        return Err(bad(format!(
            "{key}={s}: give one value or one per channel (3 for rgb), separated by ':'"
        )));
    }
    Ok(v)
}

impl Preprocess {
    /// Checks the values: positive sizes, a non-zero scale, non-zero stds,
    /// per-channel lists that fit the channels.
    pub fn validate(&self) -> Result<(), ImageError> {
        if let Some(s) = self.size {
            if s.width == 0 || s.height == 0 || s.width > 8192 || s.height > 8192 {
                return Err(bad("size: width and height must be between 1 and 8192"));
            }
        }
        let Scale { mul, div } = self.scale;
        if !(mul.is_finite() && div.is_finite() && mul != 0.0 && div != 0.0) {
            return Err(bad("scale must be a non-zero finite number or ratio"));
        }
        if self.std.iter().any(|&s| s == 0.0 || !s.is_finite()) || self.std.is_empty() {
            return Err(bad("std values must be non-zero and finite"));
        }
        if self.mean.is_empty() || self.mean.iter().any(|m| !m.is_finite()) {
            return Err(bad("mean values must be finite"));
        }
        if let Some(c) = self.channels {
            for (key, v) in [("mean", &self.mean), ("std", &self.std)] {
                if v.len() != 1 && v.len() != c.count() {
                    return Err(bad(format!(
                        "{key} has {} values but channels={c} has {}",
                        v.len(),
                        c.count()
                    )));
                }
            }
        }
        Ok(())
    }
}

impl FromStr for Preprocess {
    type Err = ImageError;

    /// Parses `key=value,...` (keys `size`, `channels`, `scale`, `mean`,
    /// `std`, `layout`) or the JSON of the struct.
    fn from_str(text: &str) -> Result<Self, ImageError> {
        let text = text.trim();
        if text.len() > MAX_SPEC_LEN {
            return Err(bad(format!("longer than {MAX_SPEC_LEN} characters")));
        }
        if text.starts_with('{') {
            let p: Preprocess =
                serde_json::from_str(text).map_err(|e| bad(format!("malformed JSON: {e}")))?;
            p.validate()?;
            return Ok(p);
        }
        let mut p = Preprocess::default();
        for field in text.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            let (key, value) = field
                .split_once('=')
                .ok_or_else(|| bad(format!("{field:?} is not key=value")))?;
            let value = value.trim();
            match key.trim() {
                "size" => {
                    let (w, h) = value.split_once(['x', 'X']).ok_or_else(|| {
                        bad(format!("size={value}: write WIDTHxHEIGHT, e.g. 28x28"))
                    })?;
                    let dim = |d: &str| {
                        d.trim()
                            .parse::<u32>()
                            .map_err(|_| bad(format!("size={value}: {d:?} is not a pixel count")))
                    };
                    p.size = Some(Size {
                        width: dim(w)?,
                        height: dim(h)?,
                    });
                }
                "channels" => {
                    p.channels = Some(match value.to_ascii_lowercase().as_str() {
                        "gray" | "grey" | "l" => Channels::Gray,
                        "rgb" => Channels::Rgb,
                        _ => return Err(bad(format!("channels={value}: use gray or rgb"))),
                    })
                }
                "scale" => {
                    p.scale = match value.split_once('/') {
                        Some((m, d)) => Scale {
                            mul: number("scale", m)?,
                            div: number("scale", d)?,
                        },
                        None => Scale {
                            mul: number("scale", value)?,
                            div: 1.0,
                        },
                    }
                }
                "mean" => p.mean = list("mean", value)?,
                "std" => p.std = list("std", value)?,
                "layout" => {
                    p.layout = match value.to_ascii_lowercase().as_str() {
                        "nchw" => Layout::Nchw,
                        "nhwc" => Layout::Nhwc,
                        _ => return Err(bad(format!("layout={value}: use nchw or nhwc"))),
                    }
                }
                other => {
                    return Err(bad(format!(
                        "unknown key {other:?}; keys are size, channels, scale, mean, std, layout"
                    )))
                }
            }
        }
        p.validate()?;
        Ok(p)
    }
}

impl fmt::Display for Channels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Channels::Gray => "gray",
            Channels::Rgb => "rgb",
        })
    }
}

impl fmt::Display for Preprocess {
    /// The canonical `key=value,...` text (parses back to the same spec).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |v: &[f32]| v.iter().map(f32::to_string).collect::<Vec<_>>().join(":");
        if let Some(s) = self.size {
            write!(f, "size={}x{},", s.width, s.height)?;
        }
        if let Some(c) = self.channels {
            write!(f, "channels={c},")?;
        }
        let Scale { mul, div } = self.scale;
        if div == 1.0 {
            write!(f, "scale={mul},")?;
        } else {
            write!(f, "scale={mul}/{div},")?;
        }
        let layout = match self.layout {
            Layout::Nchw => "nchw",
            Layout::Nhwc => "nhwc",
        };
        write!(
            f,
            "mean={},std={},layout={layout}",
            join(&self.mean),
            join(&self.std)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_and_defaults_are_the_bundled_preprocessing() {
        let p: Preprocess =
            "size=224x200, channels=rgb,scale=1/255,mean=0.485:0.456:0.406,std=0.229:0.224:0.225"
                .parse()
                .unwrap();
        assert_eq!(
            p.size,
            Some(Size {
                width: 224,
                height: 200
            })
        );
        assert_eq!(p.channels, Some(Channels::Rgb));
        assert_eq!(p.mean.len(), 3);
        assert_eq!(p.to_string().parse::<Preprocess>().unwrap(), p);
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json.parse::<Preprocess>().unwrap(), p);
        let d: Preprocess = "".parse().unwrap();
        assert_eq!(d, Preprocess::default());
        assert_eq!(d.to_string(), "scale=1/255,mean=0,std=1,layout=nchw");
    }

    #[test]
    fn bad_specs_are_refused_with_the_field() {
        for (spec, needle) in [
            ("size=28", "WIDTHxHEIGHT"),
            ("size=0x28", "between 1 and 8192"),
            ("channels=cmyk", "gray or rgb"),
            ("scale=0", "non-zero"),
            ("scale=1/x", "not a finite number"),
            ("std=0", "non-zero"),
            ("mean=1:2", "one per channel"),
            ("channels=gray,mean=1:2:3", "channels=gray has 1"),
            ("layout=chw", "nchw or nhwc"),
            ("colour=red", "unknown key"),
            ("gray", "not key=value"),
            ("{\"size\": 3}", "malformed JSON"),
        ] {
            let e = spec.parse::<Preprocess>().unwrap_err().to_string();
            assert!(e.contains(needle), "{spec}: {e}");
        }
    }
}
