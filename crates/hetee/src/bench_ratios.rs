//! Ratios between rows of one `hetee bench` run: each served row against
//! the in-process latency row, each stacked row against the batch rows.

use crate::bench::BenchRow;

/// Fills `served_ratio` of every `served` row from the `latency` row of its
/// model and threads.
pub(crate) fn set_served_ratios(rows: &mut [BenchRow]) {
    let ratios: Vec<Option<f64>> = rows
        .iter()
        .map(|r| {
            let latency = beside(rows, r, |b| b.mode == "latency")?.latency_ms;
            (r.mode == "served" && latency > 0.0).then(|| r.latency_ms / latency)
        })
        .collect();
    for (r, ratio) in rows.iter_mut().zip(ratios) {
        r.served_ratio = ratio;
    }
}

/// The row of `r`'s model and threads that `hit` picks, if any.
fn beside<'a>(
    rows: &'a [BenchRow],
    r: &BenchRow,
    hit: impl Fn(&BenchRow) -> bool,
) -> Option<&'a BenchRow> {
    rows.iter()
        .find(|b| b.model == r.model && b.threads == r.threads && hit(b))
}

/// Images per query of a batch row: `N` of a `batchN` row, the planner's
/// batch of the `batch` row; `None` for other modes.
fn batch_size(r: &BenchRow) -> Option<usize> {
    let n = r.mode.strip_prefix("batch")?;
    Some(n.parse().unwrap_or(r.batch))
}

/// Queries in one stack of a stacked row: clients × in flight.
fn stack_size(r: &BenchRow) -> usize {
    r.clients * r.in_flight.max(1)
}

/// Fills `batch_ratio` and `stack_batch_ratio` of every `stacked` row:
/// its throughput over the `batch` row's and over the in-process batch at
/// its own stack size, same model and threads.
pub(crate) fn set_stack_ratios(rows: &mut [BenchRow]) {
    let ratios: Vec<(Option<f64>, Option<f64>)> = rows
        .iter()
        .map(|r| {
            if !r.mode.starts_with("stacked") {
                return (None, None);
            }
            let over = |b: Option<&BenchRow>| {
                b.map(|b| b.throughput_img_s)
                    .filter(|tp| *tp > 0.0)
                    .map(|tp| r.throughput_img_s / tp)
            };
            (
                over(beside(rows, r, |b| b.mode == "batch")),
                over(beside(rows, r, |b| batch_size(b) == Some(stack_size(r)))),
            )
        })
        .collect();
    for (r, (batch, stack)) in rows.iter_mut().zip(ratios) {
        r.batch_ratio = batch;
        r.stack_batch_ratio = stack;
    }
}

/// One line per stacked row for under the table: the two ratios in words.
pub(crate) fn stack_summary(rows: &[BenchRow]) -> String {
    let mut out = String::new();
    for r in rows.iter().filter(|r| r.mode.starts_with("stacked")) {
        let pct = |x: Option<f64>| x.map_or("n/a".to_string(), |x| format!("{:.0} %", 100.0 * x));
        let batch = beside(rows, r, |b| b.mode == "batch").map_or(0, |b| b.batch);
        out.push_str(&format!(
            "{} {}: {} of the batch row ({batch} images per query), {} of an in-process batch of its stack size ({})\n",
            r.model,
            r.mode,
            pct(r.batch_ratio),
            pct(r.stack_batch_ratio),
            stack_size(r),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::tests::row;

    #[test]
    fn served_rows_get_their_ratio_to_the_same_models_latency_row() {
        let mut rows = vec![
            row("a", "latency", 2, 10.0),
            row("b", "latency", 2, 4.0),
            row("a", "served", 2, 12.0),
            row("b", "served", 2, 5.0),
            row("c", "served", 2, 5.0),
            row("a", "latency", 1, 20.0),
        ];
        set_served_ratios(&mut rows);
        let ratios: Vec<Option<f64>> = rows.iter().map(|r| r.served_ratio).collect();
        assert_eq!(ratios, vec![None, None, Some(1.2), Some(1.25), None, None]);
        let json = serde_json::to_value(&rows[2]).unwrap();
        for key in [
            "plaintext_engine",
            "plaintext_ms",
            "reference_ms",
            "served_ratio",
            "clients",
        ] {
            assert!(json.get(key).is_some(), "{key} missing");
        }
    }

    #[test]
    fn stacked_rows_get_their_ratios_to_the_batch_rows_of_their_model() {
        let tp = |mut r: BenchRow, tp: f64, batch: usize| {
            (r.throughput_img_s, r.batch) = (tp, batch);
            r
        };
        let mut stacked = tp(row("a", "stacked16", 2, 1.0), 300.0, 1);
        stacked.clients = 16;
        let mut deep = tp(row("a", "stacked16x4", 2, 1.0), 450.0, 1);
        (deep.clients, deep.in_flight) = (16, 4);
        let mut rows = vec![
            tp(row("a", "batch", 2, 1.0), 500.0, 64),
            tp(row("a", "batch16", 2, 1.0), 400.0, 16),
            tp(row("b", "batch", 2, 1.0), 100.0, 64),
            stacked,
            deep,
        ];
        set_stack_ratios(&mut rows);
        let got = |i: usize| (rows[i].batch_ratio, rows[i].stack_batch_ratio);
        assert_eq!(got(3), (Some(0.6), Some(0.75)));
        // 16 x 4 fill the batch row's 64-image stacks.
        assert_eq!(got(4), (Some(0.9), Some(0.9)));
        assert_eq!(got(0), (None, None));
        let text = stack_summary(&rows);
        assert!(text.contains("a stacked16: 60 % of the batch row (64 images per query), 75 %"));
        let json = serde_json::to_value(&rows[3]).unwrap();
        for key in ["batch_ratio", "stack_batch_ratio"] {
            assert!(json.get(key).is_some(), "{key} missing");
        }
        assert!(serde_json::to_value(&rows[0])
            .unwrap()
            .get("batch_ratio")
            .is_none());
    }
}
