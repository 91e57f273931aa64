//! The synthetic data set: deterministic, MVTec layout, masks that cover the painted defects.

use vigil_model::synth::{DefectKind, SynthConfig, generate, sample};

#[test]
fn the_same_seed_writes_the_same_files_in_mvtec_layout() {
    let cfg = SynthConfig { size: 64, n_train: 3, n_test: 10, rgb: true, seed: 42 };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let summary = generate(a.path(), &cfg).unwrap();
    generate(b.path(), &cfg).unwrap();
    assert_eq!(summary.test_good, 5);
    assert_eq!(summary.test_defects.iter().map(|(_, n)| n).sum::<usize>(), 5);
    for rel in [
        "train/good/0002.png",
        "test/good/0004.png",
        "test/scratch/0001.png",
        "ground_truth/scratch/0001_mask.png",
        "test/missing/0000.png",
        "ground_truth/missing/0000_mask.png",
    ] {
        let (x, y) = (std::fs::read(a.path().join(rel)).unwrap(), std::fs::read(b.path().join(rel)).unwrap());
        assert_eq!(x, y, "{rel} differs between two runs with the same seed");
    }
    let other = tempfile::tempdir().unwrap();
    generate(other.path(), &SynthConfig { seed: 43, ..cfg }).unwrap();
    assert_ne!(
        std::fs::read(a.path().join("train/good/0000.png")).unwrap(),
        std::fs::read(other.path().join("train/good/0000.png")).unwrap()
    );
}

#[test]
fn every_defect_changes_the_pixels_its_mask_covers() {
    for kind in DefectKind::ALL {
        for seed in 0..5 {
            let (clean, none) = sample(128, false, None, seed);
            assert!(none.is_none());
            let (defect, mask) = sample(128, false, Some(kind), seed);
            let mask = mask.unwrap();
            let area = mask.pixels().filter(|p| p.0[0] == 255).count();
            assert!((20..128 * 128 / 5).contains(&area), "{kind:?} seed {seed}: mask area {area}");
            let (c, d) = (clean.to_luma8(), defect.to_luma8());
            // The same seed gives the same surface, so the difference is the defect alone.
            let mut inside = 0.0;
            let mut outside = 0.0;
            for ((p, q), m) in c.pixels().zip(d.pixels()).zip(mask.pixels()) {
                let diff = (p.0[0] as f32 - q.0[0] as f32).abs();
                if m.0[0] == 255 { inside += diff } else { outside += diff }
            }
            let mean_inside = inside / area as f32;
            assert!(
                mean_inside > 20.0,
                "{kind:?} seed {seed}: the defect changes its pixels by {mean_inside} on average"
            );
            assert!(
                outside / ((128 * 128 - area) as f32) < 2.0,
                "{kind:?} seed {seed}: the defect spills outside its mask"
            );
        }
    }
}

#[test]
fn products_differ_in_direction_brightness_and_texture_and_each_gets_its_folder() {
    use vigil_model::synth::{PRODUCTS, generate_products, sample_product};
    // The default product is what `sample` has always drawn: the shipped bundle's test set
    // stays the same.
    let (default, _) = sample(64, false, None, 3);
    assert_eq!(default.to_luma8(), sample_product(&PRODUCTS[0], 64, false, None, 3).0.to_luma8());
    // Mean level, and the mean absolute step along x and along y (the streaks run across the
    // brushing direction, so the steps are larger across them).
    let stats = |p: usize| {
        let (mut level, mut dx, mut dy) = (0.0, 0.0, 0.0);
        for seed in 0..4 {
            let img = sample_product(&PRODUCTS[p], 128, false, None, seed).0.to_luma8();
            let v = |x: u32, y: u32| img.get_pixel(x, y).0[0] as f64 / 255.0;
            for y in 0..127 {
                for x in 0..127 {
                    level += v(x, y);
                    dx += (v(x + 1, y) - v(x, y)).abs();
                    dy += (v(x, y + 1) - v(x, y)).abs();
                }
            }
        }
        let n = 4.0 * 127.0 * 127.0;
        (level / n, dx / n, dy / n)
    };
    let [brushed, crosswise, dark, coarse] = [0, 1, 2, 3].map(stats);
    // brushed at 0.3 rad: streaks mostly along x, so steps along y are the larger; crosswise
    // turns that round.
    assert!(brushed.2 > brushed.1 && crosswise.1 > crosswise.2, "{brushed:?} {crosswise:?}");
    assert!(dark.0 < brushed.0 - 0.1, "dark {dark:?} brushed {brushed:?}");
    // Wider streaks: smaller steps across them.
    assert!(coarse.2 < 0.85 * brushed.2, "coarse {coarse:?} brushed {brushed:?}");

    let dir = tempfile::tempdir().unwrap();
    let cfg = SynthConfig { size: 32, n_train: 2, n_test: 2, rgb: false, seed: 5 };
    let written = generate_products(dir.path(), &cfg, 3).unwrap();
    let names: Vec<_> = written.iter().map(|s| s.product).collect();
    assert_eq!(names, ["brushed", "crosswise", "dark"]);
    for s in &written {
        assert!(dir.path().join(s.product).join("train/good/0001.png").is_file());
        assert!(dir.path().join(s.product).join("synth.json").is_file());
    }
    let err = generate_products(dir.path(), &cfg, 5).unwrap_err();
    assert!(err.to_string().contains("products must be 1 to 4"), "{err}");
}
