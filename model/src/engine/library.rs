//! Finding an engine's shared library (ONNX Runtime's, OpenVINO's): the configured path, else
//! an environment variable, else the places installers put it; the newest numbered file wins.

use std::path::{Path, PathBuf};

/// Where one engine's library is looked for.
pub(crate) struct Search<'a> {
    /// The file name's prefix (`libonnxruntime.so`), before any version suffix.
    pub prefix: &'a str,
    /// The config key that names it (`engine.ort_library`).
    pub key: &'a str,
    /// The environment variable that names it (`ORT_DYLIB_PATH`).
    pub env: &'a str,
    /// The places to look in, in order.
    pub dirs: Vec<PathBuf>,
}

/// The folder of the running binary and its `../lib/vigil`: where a package puts a library
/// beside vigil.
pub(crate) fn beside_binary() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        dirs.push(dir.to_path_buf());
        dirs.push(dir.join("../lib/vigil"));
    }
    dirs
}

/// The library in `dir`: the plain `prefix`, else the highest numbered `prefix.N.N`.
pub(crate) fn newest_in(dir: &Path, prefix: &str) -> Option<PathBuf> {
    let mut found: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let rest = name.strip_prefix(prefix)?;
            let version: Option<Vec<u32>> = if rest.is_empty() {
                Some(vec![u32::MAX])
            } else {
                rest.strip_prefix('.')?.split('.').map(|p| p.parse().ok()).collect()
            };
            Some((version?, e.path()))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

impl Search<'_> {
    /// The library: `configured` (a file or its folder), else the variable's, else the first
    /// of the places that has one. `Err` says every place looked at; a named path that does not
    /// exist is an error, not a reason to search further.
    pub(crate) fn find(&self, configured: Option<&Path>) -> Result<PathBuf, String> {
        let explicit = configured
            .map(|p| (p.to_path_buf(), self.key))
            .or_else(|| std::env::var_os(self.env).filter(|v| !v.is_empty()).map(|v| (PathBuf::from(v), self.env)));
        if let Some((path, origin)) = explicit {
            if path.is_file() {
                return Ok(path);
            }
            if path.is_dir()
                && let Some(lib) = newest_in(&path, self.prefix)
            {
                return Ok(lib);
            }
            return Err(format!("{} from {origin}, which does not exist", path.display()));
        }
        if let Some(lib) = self.dirs.iter().find_map(|d| newest_in(d, self.prefix)) {
            return Ok(lib);
        }
        let searched: Vec<String> = self.dirs.iter().map(|d| d.display().to_string()).collect();
        Err(format!("{} (unset), {}", self.env, searched.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_numbered_library_in_a_folder_is_taken() {
        let dir = std::env::temp_dir().join(format!("vigil-library-names-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["libopenvino_c.so.2541", "libopenvino_c.so.2641", "libopenvino.so.2641", "libopenvino_c.so.x"] {
            std::fs::write(dir.join(name), b"").unwrap();
        }
        let found = newest_in(&dir, "libopenvino_c.so");
        let missing = Search {
            prefix: "libonnxruntime.so",
            key: "engine.ort_library",
            env: "VIGIL_TEST_UNSET",
            dirs: vec![dir.clone()],
        }
        .find(None);
        let named = Search {
            prefix: "libopenvino_c.so",
            key: "engine.openvino_library",
            env: "VIGIL_TEST_UNSET",
            dirs: vec![],
        }
        .find(Some(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found.unwrap().file_name().unwrap(), "libopenvino_c.so.2641");
        assert_eq!(missing.unwrap_err(), format!("VIGIL_TEST_UNSET (unset), {}", dir.display()));
        assert_eq!(named.unwrap().file_name().unwrap(), "libopenvino_c.so.2641", "a folder named in the config");
    }
}
