//! The ELPV solar-cell data set (`pip install elpv-dataset`: 2,624 electroluminescence
//! images of 300×300 pixels with defect probabilities 0, 1/3, 2/3 and 1) turned into MVTec
//! layout. Its licence (CC BY-NC-SA 4.0) allows use, not redistribution: vigil reads it from
//! the installed package and never ships it.
//!
//! The split: normal cells (probability 0) sorted by file name, every fifth (0-based index
//! `i % 5 == 4`) to `test/good`, the rest to `train/good`; every cell with a probability above
//! 0 is a defective test image in `test/defect_p033`, `test/defect_p067` or `test/defect_p100`.
//! [`convert_by_type`] applies the same rule to each cell type (`mono`, `poly`) on its own, one
//! folder per type: the products of a conditional model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Serialize;

/// What the conversion wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ElpvSummary {
    /// The MVTec root written.
    pub root: PathBuf,
    /// Normal training images.
    pub train_good: usize,
    /// Normal test images.
    pub test_good: usize,
    /// Defective test images per folder.
    pub test_defects: BTreeMap<String, usize>,
}

/// The folder of the installed `elpv_dataset` package's `data/` (with `labels.csv`), found
/// by asking `python` (or `python3`) where the package is.
pub fn find_installed() -> anyhow::Result<PathBuf> {
    for python in ["python3", "python"] {
        let out = std::process::Command::new(python)
            .args([
                "-c",
                "import elpv_dataset, os; print(os.path.join(os.path.dirname(elpv_dataset.__file__), 'data'))",
            ])
            .output();
        if let Ok(out) = out
            && out.status.success()
        {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if dir.join("labels.csv").is_file() {
                return Ok(dir);
            }
        }
    }
    bail!(
        "the ELPV data set was not found: `pip install elpv-dataset` (in the Python on PATH), or pass --source DIR (the package's data folder, holding labels.csv and images/)"
    )
}

fn folder(probability: f64) -> anyhow::Result<&'static str> {
    Ok(match (probability * 3.0).round() as i64 {
        1 => "defect_p033",
        2 => "defect_p067",
        3 => "defect_p100",
        _ => bail!("unexpected defect probability {probability} (ELPV has 0, 1/3, 2/3 and 1)"),
    })
}

/// One row of `labels.csv`: image path, defect probability, cell type.
type Row = (String, f64, String);

fn read_labels(source: &Path) -> anyhow::Result<Vec<Row>> {
    let labels = source.join("labels.csv");
    let text = std::fs::read_to_string(&labels).with_context(|| format!("{}: cannot read", labels.display()))?;
    let mut rows = vec![];
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let mut parts = line.split_whitespace();
        let (Some(path), Some(p)) = (parts.next(), parts.next()) else {
            bail!("{} line {}: expected `images/cellNNNN.png PROBABILITY TYPE`", labels.display(), n + 1);
        };
        let p: f64 = p.parse().with_context(|| format!("{} line {}: probability `{p}`", labels.display(), n + 1))?;
        rows.push((path.to_owned(), p, parts.next().unwrap_or("").to_owned()));
    }
    Ok(rows)
}

/// Reads `labels.csv` under `source` and writes the MVTec layout under `out` (hard links
/// where the file system allows, else copies).
pub fn convert(source: &Path, out: &Path) -> anyhow::Result<ElpvSummary> {
    write_split(source, &read_labels(source)?, out)
}

/// As [`convert`], one MVTec folder per cell type under `out` (`out/mono`, `out/poly`).
pub fn convert_by_type(source: &Path, out: &Path) -> anyhow::Result<Vec<ElpvSummary>> {
    let rows = read_labels(source)?;
    let mut types: Vec<&str> = rows.iter().map(|(_, _, t)| t.as_str()).collect();
    types.sort_unstable();
    types.dedup();
    anyhow::ensure!(
        types.len() >= 2 && !types.contains(&""),
        "{}: the rows do not name two or more cell types in a third column",
        source.join("labels.csv").display()
    );
    types
        .iter()
        .map(|t| {
            let subset: Vec<Row> = rows.iter().filter(|(_, _, rt)| rt == t).cloned().collect();
            write_split(source, &subset, &out.join(t))
        })
        .collect()
}

fn write_split(source: &Path, rows: &[Row], out: &Path) -> anyhow::Result<ElpvSummary> {
    let labels = source.join("labels.csv");
    let mut normal = vec![];
    let mut defective = vec![];
    for (path, p, _) in rows {
        if *p == 0.0 { normal.push(path.clone()) } else { defective.push((path.clone(), *p)) }
    }
    anyhow::ensure!(!normal.is_empty(), "{}: no normal (probability 0) cells", labels.display());
    normal.sort();
    let place = |rel: &str, dest: &Path| -> anyhow::Result<()> {
        let from = source.join(rel);
        std::fs::create_dir_all(dest.parent().expect("a file in a folder"))?;
        if dest.exists() {
            std::fs::remove_file(dest)?;
        }
        std::fs::hard_link(&from, dest)
            .or_else(|_| std::fs::copy(&from, dest).map(|_| ()))
            .with_context(|| format!("{} -> {}", from.display(), dest.display()))
    };
    let name = |rel: &str| Path::new(rel).file_name().map(|n| n.to_owned()).unwrap_or_default();
    let mut summary =
        ElpvSummary { root: out.to_path_buf(), train_good: 0, test_good: 0, test_defects: BTreeMap::new() };
    for (i, rel) in normal.iter().enumerate() {
        let split = if i % 5 == 4 { "test" } else { "train" };
        place(rel, &out.join(split).join("good").join(name(rel)))?;
        if split == "test" { summary.test_good += 1 } else { summary.train_good += 1 }
    }
    for (rel, p) in &defective {
        let f = folder(*p)?;
        place(rel, &out.join("test").join(f).join(name(rel)))?;
        *summary.test_defects.entry(f.to_owned()).or_default() += 1;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_follows_the_published_rule() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("data");
        std::fs::create_dir_all(src.join("images")).unwrap();
        let mut csv = String::new();
        // 12 normal cells (listed out of order) and one of each defect probability.
        let probs =
            [0.0, 0.0, 1.0, 0.0, 0.0, 0.3333333333333333, 0.0, 0.0, 0.0, 0.6666666666666666, 0.0, 0.0, 0.0, 0.0, 0.0];
        for (i, p) in probs.iter().enumerate().rev() {
            let f = format!("images/cell{:04}.png", i + 1);
            std::fs::write(src.join(&f), [i as u8]).unwrap();
            csv.push_str(&format!("{f}  {p}  mono\n"));
        }
        std::fs::write(src.join("labels.csv"), csv).unwrap();
        let out = dir.path().join("mvtec");
        let s = convert(&src, &out).unwrap();
        assert_eq!((s.train_good, s.test_good), (10, 2));
        assert_eq!(s.test_defects.values().sum::<usize>(), 3);
        // Normals by name: cells 1,2,4,5,7,8,9,11,12,13,14,15; indices 4 and 9 (cells 7, 13) are test.
        assert!(out.join("test/good/cell0007.png").is_file() && out.join("test/good/cell0013.png").is_file());
        assert!(out.join("train/good/cell0001.png").is_file());
        assert!(out.join("test/defect_p033/cell0006.png").is_file());
        assert!(out.join("test/defect_p067/cell0010.png").is_file());
        assert!(out.join("test/defect_p100/cell0003.png").is_file());
        assert_eq!(std::fs::read(out.join("test/good/cell0007.png")).unwrap(), [6]);
        // By type: the odd cells are poly, each type split by the same rule on its own.
        let csv: String = std::fs::read_to_string(src.join("labels.csv"))
            .unwrap()
            .lines()
            .map(|l| {
                let n: usize = l[11..15].parse().unwrap();
                if n % 2 == 1 { l.replace("mono", "poly") } else { l.to_owned() }
            })
            .map(|l| l + "\n")
            .collect();
        std::fs::write(src.join("labels.csv"), csv).unwrap();
        let by = convert_by_type(&src, &dir.path().join("types")).unwrap();
        assert_eq!(by.len(), 2);
        assert_eq!(by.iter().map(|s| s.train_good + s.test_good).sum::<usize>(), 12);
        assert!(dir.path().join("types/mono/train/good").is_dir() && dir.path().join("types/poly/test").is_dir());
        // Normal mono cells by name: 2, 4, 8, 12, 14: the fifth (cell 14) is test.
        assert!(dir.path().join("types/mono/test/good/cell0014.png").is_file());
    }
}
