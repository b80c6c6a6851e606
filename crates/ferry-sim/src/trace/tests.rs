use super::*;

fn write(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferry-sim-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok();
    let p = dir.join(name);
    std::fs::write(&p, text).ok();
    p
}

#[test]
fn parses_and_interpolates() {
    let p = write("ok.tsv", "a\t0 50 100\nb\t10 10 10\n");
    let t = load_planetlab(&p).expect("parses");
    assert_eq!(t.rows(), 2);
    assert_eq!(t.at(0, 300.0), 0.5);
    assert!((t.at(0, 450.0) - 0.75).abs() < 1e-12);
    assert_eq!(t.at(0, 900.0), 1.0);
}

#[test]
fn malformed_line_names_file_and_line() {
    let p = write("bad.tsv", "a\t1 2 3\nb\t1 x 3\n");
    let e = load_planetlab(&p).expect_err("must fail").to_string();
    assert!(e.contains("bad.tsv:2:"), "{e}");
    assert!(e.contains("'x'"), "{e}");
    let p = write("short.tsv", "a\t1 2 3\nb\t1 2\n");
    assert!(load_planetlab(&p)
        .expect_err("must fail")
        .to_string()
        .contains("short.tsv:2:"));
    let p = write("big.tsv", "a\t1 200 3\n");
    assert!(load_planetlab(&p)
        .expect_err("must fail")
        .to_string()
        .contains("above 100"));
}

#[test]
fn bundled_sample_is_found() {
    let p = resolve("20110303", Some(&bundled_dir())).expect("sample present");
    assert!(load_planetlab(&p).is_ok());
}

#[test]
fn cached_reads_give_the_same_values() {
    let t = Trace::Synthetic(SyntheticParams {
        vms: 3,
        days: 0.5,
        ..SyntheticParams::default()
    });
    let mut caches = [SampleCache::default(); 3];
    let mut times: Vec<f64> = (0..400).map(|i| 0.1 + i as f64 * 37.3).collect();
    times.extend([300.0, 600.0, 599.9, 600.1, 0.0, 150.0]);
    for &x in &times {
        for (row, cache) in caches.iter_mut().enumerate() {
            assert_eq!(
                t.at_cached(row, x, cache).to_bits(),
                t.at(row, x).to_bits(),
                "{row} {x}"
            );
        }
    }
}
