//! The planner's prediction of the host's memory for a model's encrypted
//! weights (`Schedule::weight_memory`, which picks the batch sizes that fit
//! the host's budget) is what the host really holds once it loads them.

#[test]
fn the_predicted_weight_memory_is_what_the_host_holds() {
    for (name, batch) in [("mnist", 1), ("e2dm", 1), ("e2dm", 16)] {
        let (model, calib) = hetee::cli::load_model(name, None).unwrap();
        let q = hetee::cli::prepare(&model, &calib).unwrap();
        let h = hetee::harness::Harness::new(&q, batch).unwrap();
        assert!(h.weight_memory > 0, "{name} at {batch}");
        assert_eq!(
            h.schedule.weight_memory(),
            h.weight_memory,
            "{name} at batch {}",
            h.schedule.batch
        );
    }
}
