//! `hetee run` on image inputs (PNG and JPEG files made here from real
//! MNIST test images): a folder of PNGs gives bit for bit what the same
//! pixels give as `.npy`; JPEGs run and the secure output equals
//! `--plaintext`; `--json` lists the files in the order they ran; size,
//! channel and corrupt-file errors are clear.

mod common;

use std::path::Path;

use common::images::{write_mnist, write_npy_of};
use common::{describe, hetee};
use serde_json::Value;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn run(input: &Path, output: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "run",
        "--model",
        "mnist",
        "--input",
        s(input),
        "--output",
        s(output),
    ];
    args.extend_from_slice(extra);
    hetee(&args)
}

fn ok_json(out: &std::process::Output) -> Value {
    assert!(out.status.success(), "{}", describe(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(out)))
}

/// The float32 payload of a `.npy` written by hetee (its last 4·n bytes).
fn floats(path: &Path, n: usize) -> Vec<u32> {
    let b = std::fs::read(path).unwrap();
    b[b.len() - 4 * n..]
        .chunks(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn a_png_folder_equals_the_same_pixels_as_npy_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("imgs");
    // Written out of name order; a stray non-image file is skipped.
    let (sorted, order) = write_mnist(&imgs, &["c.png", "a.png", "e.PNG", "b.png", "d.png"]);
    std::fs::write(imgs.join("notes.txt"), "not an image").unwrap();
    let x = dir.path().join("x.npy");
    write_npy_of(&x, &order);
    let (y_img, y_npy) = (dir.path().join("y_img.npy"), dir.path().join("y_npy.npy"));
    // Secure on the PNGs, the plaintext reference on the .npy.
    let doc = ok_json(&run(&imgs, &y_img, &["--json"]));
    let out = run(&x, &y_npy, &["--plaintext"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(out.stdout.is_empty(), "no --json, nothing on stdout");
    let a = std::fs::read(&y_img).unwrap();
    assert!(
        a == std::fs::read(&y_npy).unwrap(),
        "PNG inputs differ from the same pixels as .npy"
    );
    assert_eq!(doc["mode"], "secure");
    assert_eq!(doc["images"], 5);
    assert_eq!(doc["output_shape"], serde_json::json!([5, 10]));
    assert_eq!(doc["preprocess"], "scale=1/255,mean=0,std=1,layout=nchw");
    assert!(doc["report"]["layers"].as_array().unwrap().len() >= 2);
    let bits = floats(&y_img, 50);
    let results = doc["results"].as_array().unwrap();
    let files: Vec<&str> = results
        .iter()
        .map(|r| r["file"].as_str().unwrap())
        .collect();
    assert_eq!(files, sorted);
    for (i, r) in results.iter().enumerate() {
        let row: Vec<u32> = r["output"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| (v.as_f64().unwrap() as f32).to_bits())
            .collect();
        assert_eq!(row, bits[i * 10..(i + 1) * 10], "results[{i}]");
        let best = (0..10)
            .max_by(|&p, &q| {
                f32::from_bits(row[p])
                    .total_cmp(&f32::from_bits(row[q]))
                    .then(q.cmp(&p))
            })
            .unwrap();
        assert_eq!(r["class"], best);
    }
    // One image file alone.
    let one = dir.path().join("one.npy");
    let out = run(&imgs.join("a.png"), &one, &["--plaintext"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(floats(&one, 10), floats(&y_npy, 50)[..10]);
}

#[test]
fn jpegs_run_and_the_secure_output_equals_the_plaintext_reference() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("jpg");
    write_mnist(&imgs, &["0.jpg", "1.jpeg", "2.jpg"]);
    let (secure, plain) = (dir.path().join("s.npy"), dir.path().join("p.npy"));
    // The bundled model's own preprocessing, spelled out.
    let spec = ["--preprocess", "size=28x28,channels=gray,scale=1/255"];
    let doc = ok_json(&run(&imgs, &secure, &[&spec[..], &["--json"]].concat()));
    let out = run(&imgs, &plain, &[&spec[..], &["--plaintext"]].concat());
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(doc["images"], 3);
    assert_eq!(
        doc["preprocess"],
        "size=28x28,channels=gray,scale=1/255,mean=0,std=1,layout=nchw"
    );
    assert!(std::fs::read(&secure).unwrap() == std::fs::read(&plain).unwrap());
}

#[test]
fn images_that_cannot_fit_and_corrupt_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("imgs");
    write_mnist(&imgs, &["a.png"]);
    let y = dir.path().join("y.npy");
    let fails = |input: &Path, extra: &[&str], needle: &str| {
        let out = run(input, &y, &[extra, &["--plaintext"]].concat());
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{}", describe(&out));
        assert!(err.contains(needle), "{needle:?} not in: {err}");
        assert!(!err.contains("panicked"), "{err}");
    };
    fails(&imgs, &["--preprocess", "size=32x32"], "takes 28x28");
    fails(&imgs, &["--preprocess", "channels=rgb"], "has 1");
    fails(&imgs, &["--preprocess", "scale=0"], "--preprocess");
    // A 32x32 image: refused without a size, resized with one.
    let big = dir.path().join("big");
    std::fs::create_dir(&big).unwrap();
    image::GrayImage::from_pixel(32, 32, image::Luma([200]))
        .save(big.join("big.png"))
        .unwrap();
    fails(&big, &[], "add size=28x28");
    let out = run(&big, &y, &["--preprocess", "size=28x28", "--plaintext"]);
    assert!(out.status.success(), "{}", describe(&out));
    // A corrupt file is named.
    std::fs::write(imgs.join("broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    fails(&imgs, &[], "broken.png is not a readable PNG or JPEG");
    // A folder without images.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    fails(&empty, &[], "holds no .png, .jpg or .jpeg file");
    fails(&dir.path().join("missing.png"), &[], "missing.png");
}
