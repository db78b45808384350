//! Ratios between rows of one `hetee bench` run: each served row against
//! the in-process latency row, each stacked row against the batch rows.

use crate::bench::BenchRow;

/// Fills `served_ratio` of every `served` row from the `latency` row of its
/// model and threads.
pub(crate) fn set_served_ratios(rows: &mut [BenchRow]) {
    let latency: Vec<(String, usize, f64)> = rows
        .iter()
        .filter(|r| r.mode == "latency")
        .map(|r| (r.model.clone(), r.threads, r.latency_ms))
        .collect();
    for r in rows.iter_mut().filter(|r| r.mode == "served") {
        r.served_ratio = latency
            .iter()
            .find(|(m, t, _)| *m == r.model && *t == r.threads)
            .filter(|(_, _, l)| *l > 0.0)
            .map(|(_, _, l)| r.latency_ms / l);
    }
}

/// Fills `batch_ratio` and `stack_batch_ratio` of every `stacked` row:
/// its throughput over the `batch` row's and over the in-process batch at
/// its own stack size (clients × in flight), same model and threads.
pub(crate) fn set_stack_ratios(rows: &mut [BenchRow]) {
    let batches: Vec<(String, String, usize, usize, f64)> = rows
        .iter()
        .filter(|r| r.mode.starts_with("batch"))
        .map(|r| {
            let size = r.mode["batch".len()..].parse().ok();
            (
                r.model.clone(),
                r.mode.clone(),
                r.threads,
                size.unwrap_or(r.batch),
                r.throughput_img_s,
            )
        })
        .collect();
    let find = |r: &BenchRow, hit: &dyn Fn(&str, usize) -> bool| {
        batches
            .iter()
            .find(|(m, mode, t, size, _)| *m == r.model && *t == r.threads && hit(mode, *size))
            .map(|b| b.4)
            .filter(|tp| *tp > 0.0)
            .map(|tp| r.throughput_img_s / tp)
    };
    for r in rows.iter_mut().filter(|r| r.mode.starts_with("stacked")) {
        let stack = r.clients * r.in_flight.max(1);
        r.batch_ratio = find(r, &|mode, _| mode == "batch");
        r.stack_batch_ratio = find(r, &|_, size| size == stack);
    }
}

/// One line per stacked row for under the table: the two ratios in words.
pub(crate) fn stack_summary(rows: &[BenchRow]) -> String {
    let mut out = String::new();
    for r in rows.iter().filter(|r| r.mode.starts_with("stacked")) {
        let pct = |x: Option<f64>| x.map_or("n/a".to_string(), |x| format!("{:.0} %", 100.0 * x));
        let batch = rows
            .iter()
            .find(|b| b.model == r.model && b.threads == r.threads && b.mode == "batch")
            .map_or(0, |b| b.batch);
        out.push_str(&format!(
            "{} {}: {} of the batch row ({batch} images per query), {} of an in-process batch of its stack size ({})\n",
            r.model,
            r.mode,
            pct(r.batch_ratio),
            pct(r.stack_batch_ratio),
            r.clients * r.in_flight.max(1),
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
