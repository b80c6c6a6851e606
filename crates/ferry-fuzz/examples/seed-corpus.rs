//! Writes every target's seeds into `<dir>/<target>/seed-<n>` (the start of a corpus):
//! `cargo run -p ferry-fuzz --example seed-corpus -- fuzz/corpus`.

use std::path::PathBuf;

use ferry_fuzz::Target;

fn main() -> std::io::Result<()> {
    let root: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("fuzz/corpus"));
    for t in Target::ALL {
        let dir = root.join(t.name());
        std::fs::create_dir_all(&dir)?;
        for (i, seed) in t.seeds().iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), seed)?;
        }
        println!("{}: {} seeds in {}", t, t.seeds().len(), dir.display());
    }
    Ok(())
}
