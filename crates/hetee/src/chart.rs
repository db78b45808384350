//! SVG chart of `hetee bench` results (plotters): latency per configuration.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::bench::BenchRow;

/// Draws one horizontal bar per latency-mode row (ms per image, log scale
/// is avoided so the bars read as ratios), labelled with model and threads.
pub fn draw(rows: &[BenchRow], path: &Path) -> Result<()> {
    let bars: Vec<(String, f64, f64)> = rows
        .iter()
        .map(|r| {
            let per_image = if r.mode.starts_with("batch") {
                1e3 / r.throughput_img_s
            } else {
                r.latency_ms
            };
            (
                format!("{} {} {}t", r.model, r.mode, r.threads),
                per_image,
                r.enclave_ms.min(per_image),
            )
        })
        .collect();
    let max = bars.iter().map(|b| b.1).fold(1.0, f64::max) * 1.15;
    let root = SVGBackend::new(path, (900, 80 + 40 * bars.len() as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("chart: {e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "hetee: ms per image (blue: host + client, red: enclave)",
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(170)
        .build_cartesian_2d(0.0..max, (0..bars.len()).into_segmented())
        .map_err(|e| anyhow!("chart: {e}"))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(bars.len())
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => bars.get(*i).map(|b| b.0.clone()).unwrap_or_default(),
            _ => String::new(),
        })
        .x_desc("ms per image")
        .draw()
        .map_err(|e| anyhow!("chart: {e}"))?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, b)| {
            Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(i)),
                    (b.1, SegmentValue::Exact(i + 1)),
                ],
                BLUE.mix(0.5).filled(),
            )
        }))
        .map_err(|e| anyhow!("chart: {e}"))?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, b)| {
            Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(i)),
                    (b.2, SegmentValue::Exact(i + 1)),
                ],
                RED.mix(0.7).filled(),
            )
        }))
        .map_err(|e| anyhow!("chart: {e}"))?;
    root.present().map_err(|e| anyhow!("chart: {e}"))?;
    Ok(())
}
