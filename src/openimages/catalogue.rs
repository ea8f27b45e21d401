//! The class catalogue: the 601 boxable classes with display names, which 350 have masks, the
//! hierarchy DAG (`Subcategory` is-a edges, `Part` part-of edges), name search, expansion of a
//! parent to its segmentable descendants, per-split counts and download-size estimates.
//! Parsed once and kept in the cache index.
//!
//! The three small class files are also built into the binary ([`builtin`]), so browsing,
//! search and the hierarchy work offline: the index is seeded from the network when it answers
//! and from the built-in copy when it does not ([`CatalogueSource`]).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::AtomicU64;

use rusqlite::params;

use crate::cancel::CancelToken;

use super::builtin;
use super::http::Http;
use super::{Config, Error, Index, Split};

/// Class descriptions as linked from the V5/V6 pages (no header).
pub const CLASS_DESCRIPTIONS: &str = "v5/class-descriptions-boxable.csv";
/// The V7 name of the same file (header `LabelName,DisplayName`).
pub const CLASS_DESCRIPTIONS_V7: &str = "v7/oidv7-class-descriptions-boxable.csv";
/// The 350 classes with masks.
pub const SEGMENTATION_CLASSES: &str = "v5/classes-segmentation.txt";
/// The V7 name of the same list.
pub const SEGMENTATION_CLASSES_V7: &str = "v7/oidv7-classes-segmentation.txt";
/// The hierarchy.
pub const HIERARCHY: &str = "2018_04/bbox_labels_600_hierarchy.json";
/// The hierarchy root, absent from the class descriptions.
pub const ROOT_MID: &str = "/m/0bl9f";
/// Average bytes fetched per mask with range reads (docs §2.3: 1.7–2.3 KB per zip entry).
pub const MASK_BYTES_ESTIMATE: u64 = 2_048;

const CATALOGUE_KEY: &str = "catalogue";
/// `meta` value of a catalogue parsed from the built-in files (anything else was downloaded).
const BUILTIN_VALUE: &str = "builtin";

/// Where the catalogue's class files came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CatalogueSource {
    /// Downloaded from the Open Images bucket (or the configured mirror).
    #[default]
    Downloaded,
    /// The copy built into the binary ([`builtin::VERSION`]).
    BuiltIn,
}

/// Images and masks of a class in one split.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClassCounts {
    /// Images with at least one mask of the class.
    pub images: u64,
    /// Masks of the class.
    pub masks: u64,
}

/// One class of the catalogue.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassInfo {
    /// MID, e.g. `/m/01b9xk`.
    pub mid: String,
    /// Display name, e.g. `Hot dog`.
    pub name: String,
    /// Whether it is among the 350 mask classes.
    pub segmentable: bool,
    /// Counts per indexed split (splits not indexed yet are absent).
    pub counts: BTreeMap<Split, ClassCounts>,
}

/// Hierarchy edge kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EdgeKind {
    /// Is-a (`Subcategory`).
    Subcategory,
    /// Part-of (`Part`).
    Part,
}

impl EdgeKind {
    fn as_str(self) -> &'static str {
        match self {
            EdgeKind::Subcategory => "subcategory",
            EdgeKind::Part => "part",
        }
    }
}

/// A download-size estimate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SizeEstimate {
    /// Images.
    pub images: u64,
    /// Masks.
    pub masks: u64,
    /// Image bytes (average CVDF image size × images).
    pub image_bytes: u64,
    /// Mask bytes (≈ 2 KB per mask with range reads).
    pub mask_bytes: u64,
}

impl SizeEstimate {
    /// Everything.
    pub fn total_bytes(&self) -> u64 {
        self.image_bytes + self.mask_bytes
    }
}

/// The catalogue.
#[derive(Debug, Clone, Default)]
pub struct Catalogue {
    classes: Vec<ClassInfo>,
    by_mid: HashMap<String, usize>,
    children: HashMap<String, Vec<(String, EdgeKind)>>,
    parents: HashMap<String, Vec<(String, EdgeKind)>>,
    indexed: Vec<Split>,
    source: CatalogueSource,
    /// Whether any class is marked segmentable ([`Catalogue::masks_known`]).
    masks_known: bool,
    /// Why this load fell back to the built-in files (the network error), if it did.
    fallback_reason: Option<String>,
}

#[derive(serde::Deserialize)]
struct Node {
    #[serde(rename = "LabelName")]
    label: String,
    #[serde(rename = "Subcategory", default)]
    subcategory: Vec<Node>,
    #[serde(rename = "Part", default)]
    part: Vec<Node>,
}

/// Parses a class-description CSV, with or without the `LabelName,DisplayName` header.
pub fn parse_class_descriptions(bytes: &[u8], file: &str) -> Result<Vec<(String, String)>, Error> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes);
    let mut out = Vec::new();
    for (i, rec) in reader.records().enumerate() {
        let rec = rec.map_err(|e| Error::Format {
            file: file.into(),
            message: e.to_string(),
        })?;
        if rec.len() < 2 {
            continue;
        }
        let (mid, name) = (rec[0].trim(), rec[1].trim());
        if i == 0 && mid == "LabelName" && name == "DisplayName" {
            continue; // the V7 header
        }
        if !mid.is_empty() {
            out.push((mid.to_owned(), name.to_owned()));
        }
    }
    if out.is_empty() {
        return Err(Error::Format {
            file: file.into(),
            message: "no classes".into(),
        });
    }
    Ok(out)
}

/// Parses `classes-segmentation.txt` (one MID per line).
pub fn parse_segmentation_classes(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Parses the hierarchy JSON into (parent, child, kind) edges.
pub fn parse_hierarchy(bytes: &[u8], file: &str) -> Result<Vec<(String, String, EdgeKind)>, Error> {
    let root: Node = serde_json::from_slice(bytes).map_err(|e| Error::Format {
        file: file.into(),
        message: e.to_string(),
    })?;
    let mut edges = HashSet::new();
    let mut stack = vec![&root];
    while let Some(node) = stack.pop() {
        for (kids, kind) in [
            (&node.subcategory, EdgeKind::Subcategory),
            (&node.part, EdgeKind::Part),
        ] {
            for kid in kids {
                edges.insert((node.label.clone(), kid.label.clone(), kind));
                stack.push(kid);
            }
        }
    }
    let mut edges: Vec<_> = edges.into_iter().collect();
    edges.sort_by(|a, b| (&a.0, &a.1, a.2.as_str()).cmp(&(&b.0, &b.1, b.2.as_str())));
    Ok(edges)
}

/// Largest class file downloaded (descriptions, segmentable MIDs, hierarchy): each is read
/// into memory and parsed whole. The real ones are 12 KB (boxable descriptions), a few KB
/// (segmentable MIDs) and 89 KB (the hierarchy JSON); 8 MiB leaves room for far larger lists,
/// and a server sending more is broken or hostile.
const MAX_CLASS_FILE_BYTES: u64 = 8 << 20;

/// Downloads (or reuses) a small GCS file (at most [`MAX_CLASS_FILE_BYTES`]) into the cache and
/// returns its bytes.
fn fetch_small(
    http: &Http,
    cfg: &Config,
    path: &str,
    cancel: &CancelToken,
    counter: &AtomicU64,
    force: bool,
) -> Result<Vec<u8>, Error> {
    let dest = cfg.file_path(path);
    if force || !dest.is_file() {
        let url = cfg.gcs_url(path);
        let limit = Some(MAX_CLASS_FILE_BYTES);
        http.download_file(&url, &dest, cancel, counter, &|_, _| {}, limit)?;
    }
    std::fs::read(&dest).map_err(Error::io(&dest))
}

/// Fetches a file, falling back to its V7 name when the V5 one is missing (403/404).
fn fetch_either(
    http: &Http,
    cfg: &Config,
    paths: [&str; 2],
    cancel: &CancelToken,
    counter: &AtomicU64,
    force: bool,
) -> Result<(Vec<u8>, String), Error> {
    match fetch_small(http, cfg, paths[0], cancel, counter, force) {
        Ok(b) => Ok((b, paths[0].to_owned())),
        Err(Error::Status {
            status: 403 | 404, ..
        }) => Ok((
            fetch_small(http, cfg, paths[1], cancel, counter, force)?,
            paths[1].to_owned(),
        )),
        Err(e) => Err(e),
    }
}

/// The three class files, parsed: names, segmentable MIDs, hierarchy edges.
type ClassFiles = (
    Vec<(String, String)>,
    Vec<String>,
    Vec<(String, String, EdgeKind)>,
);

/// The built-in class files ([`builtin`]), parsed.
fn builtin_class_files() -> Result<ClassFiles, Error> {
    let names =
        parse_class_descriptions(builtin::BOXABLE, "built-in class-descriptions-boxable.csv")?;
    let seg = parse_segmentation_classes(&String::from_utf8_lossy(builtin::SEGMENTATION));
    let edges = parse_hierarchy(
        builtin::HIERARCHY,
        "built-in bbox_labels_600_hierarchy.json",
    )?;
    Ok((names, seg, edges))
}

/// Downloads and parses the three class files (`force` re-downloads cached copies).
fn download_class_files(
    http: &Http,
    cfg: &Config,
    cancel: &CancelToken,
    counter: &AtomicU64,
    force: bool,
) -> Result<ClassFiles, Error> {
    let (desc, desc_name) = fetch_either(
        http,
        cfg,
        [CLASS_DESCRIPTIONS, CLASS_DESCRIPTIONS_V7],
        cancel,
        counter,
        force,
    )?;
    let names = parse_class_descriptions(&desc, &desc_name)?;
    let (seg, _) = fetch_either(
        http,
        cfg,
        [SEGMENTATION_CLASSES, SEGMENTATION_CLASSES_V7],
        cancel,
        counter,
        force,
    )?;
    let seg = parse_segmentation_classes(&String::from_utf8_lossy(&seg));
    let hierarchy = fetch_small(http, cfg, HIERARCHY, cancel, counter, force)?;
    let edges = parse_hierarchy(&hierarchy, HIERARCHY)?;
    Ok((names, seg, edges))
}

/// Makes sure the catalogue is in the index: downloaded once when the network answers, else the
/// built-in copy (returned: the reason it was used). A built-in catalogue is tried again on
/// every call, so it is replaced as soon as the network answers. Cancelling is an error, never
/// a fallback.
pub(crate) fn ensure_in_index(
    http: &Http,
    cfg: &Config,
    index: &mut Index,
    cancel: &CancelToken,
    counter: &AtomicU64,
) -> Result<Option<String>, Error> {
    let stored = index.meta(CATALOGUE_KEY)?;
    if stored.as_deref().is_some_and(|v| v != BUILTIN_VALUE) {
        return Ok(None);
    }
    match download_class_files(http, cfg, cancel, counter, false) {
        Ok((names, seg, edges)) => {
            store_catalogue(index, &names, &seg, &edges, CatalogueSource::Downloaded)?;
            Ok(None)
        }
        Err(Error::Cancelled) => Err(Error::Cancelled),
        Err(e) => {
            log::info!("Open Images class files not downloaded ({e}); using the built-in copy");
            if stored.is_none() {
                let (names, seg, edges) = builtin_class_files()?;
                store_catalogue(index, &names, &seg, &edges, CatalogueSource::BuiltIn)?;
            }
            Ok(Some(e.to_string()))
        }
    }
}

/// Downloads the class files again and replaces the index's catalogue with them; on failure
/// the catalogue in the index is left as it was.
pub(crate) fn refresh_index(
    http: &Http,
    cfg: &Config,
    index: &mut Index,
    cancel: &CancelToken,
    counter: &AtomicU64,
) -> Result<(), Error> {
    let (names, seg, edges) = download_class_files(http, cfg, cancel, counter, true)?;
    store_catalogue(index, &names, &seg, &edges, CatalogueSource::Downloaded)
}

/// Writes the parsed catalogue into the index.
pub(crate) fn store_catalogue(
    index: &mut Index,
    names: &[(String, String)],
    segmentable: &[String],
    edges: &[(String, String, EdgeKind)],
    source: CatalogueSource,
) -> Result<(), Error> {
    let tx = index.conn_mut().transaction()?;
    tx.execute("UPDATE classes SET segmentable = 0", [])?;
    tx.execute("DELETE FROM edges", [])?;
    for (mid, name) in names {
        let id = Index::class_id(&tx, mid)?;
        tx.execute(
            "UPDATE classes SET name = ?1 WHERE id = ?2",
            params![name, id],
        )?;
    }
    let root = Index::class_id(&tx, ROOT_MID)?;
    tx.execute(
        "UPDATE classes SET name = COALESCE(name, 'Entity') WHERE id = ?1",
        [root],
    )?;
    for mid in segmentable {
        let id = Index::class_id(&tx, mid)?;
        tx.execute("UPDATE classes SET segmentable = 1 WHERE id = ?1", [id])?;
    }
    for (parent, child, kind) in edges {
        let (p, c) = (Index::class_id(&tx, parent)?, Index::class_id(&tx, child)?);
        tx.execute(
            "INSERT OR IGNORE INTO edges (parent, child, kind) VALUES (?1, ?2, ?3)",
            params![p, c, kind.as_str()],
        )?;
    }
    let value = match source {
        CatalogueSource::Downloaded => "v1",
        CatalogueSource::BuiltIn => BUILTIN_VALUE,
    };
    tx.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
        [CATALOGUE_KEY, value],
    )?;
    tx.commit()?;
    Ok(())
}

impl Catalogue {
    /// Loads the catalogue, downloading the class files into the cache on first use (the
    /// built-in copy when the network fails, see [`Catalogue::fallback_reason`]), and the
    /// counts of every split already indexed. Use [`Catalogue::load_with_counts`] to index more.
    pub fn load(cfg: &Config, cancel: &CancelToken) -> Result<Self, Error> {
        let http = Http::new(cfg);
        let mut index = Index::open(&cfg.cache_dir)?;
        let fallback_reason = ensure_in_index(&http, cfg, &mut index, cancel, &AtomicU64::new(0))?;
        Ok(Self::from_index(&index)?.with_fallback_reason(fallback_reason))
    }

    /// Records why this load used the built-in class files ([`Catalogue::fallback_reason`]).
    pub(crate) fn with_fallback_reason(mut self, reason: Option<String>) -> Self {
        self.fallback_reason = reason;
        self
    }

    /// The catalogue in the cache index as it is (with the counts of indexed splits), or the
    /// built-in one when the index has none yet; never touches the network.
    pub fn cached(cfg: &Config) -> Result<Self, Error> {
        let index = Index::open(&cfg.cache_dir)?;
        match index.meta(CATALOGUE_KEY)? {
            Some(_) => Self::from_index(&index),
            None => Self::builtin(),
        }
    }

    /// The catalogue of the built-in class files, without counts (no disk, no network).
    pub fn builtin() -> Result<Self, Error> {
        let (names, seg, edges) = builtin_class_files()?;
        let mut cat = Self::from_parts(&names, &seg, &edges);
        cat.source = CatalogueSource::BuiltIn;
        Ok(cat)
    }

    /// Downloads the class files again (replacing a built-in or older catalogue in the index),
    /// then loads as [`Catalogue::load`] does. Fails, leaving the index as it was, when the
    /// network does.
    pub fn refresh(cfg: &Config, cancel: &CancelToken) -> Result<Self, Error> {
        let http = Http::new(cfg);
        let mut index = Index::open(&cfg.cache_dir)?;
        refresh_index(&http, cfg, &mut index, cancel, &AtomicU64::new(0))?;
        Self::from_index(&index)
    }

    /// Builds a catalogue (no counts) from parsed class files; the root is named "Entity".
    fn from_parts(
        names: &[(String, String)],
        segmentable: &[String],
        edges: &[(String, String, EdgeKind)],
    ) -> Self {
        let seg: HashSet<&str> = segmentable.iter().map(String::as_str).collect();
        let mut named: BTreeMap<&str, &str> = names
            .iter()
            .map(|(m, n)| (m.as_str(), n.as_str()))
            .collect();
        named.entry(ROOT_MID).or_insert("Entity");
        let mut rows: Vec<(&str, &str)> = named.into_iter().collect();
        rows.sort_by(|a, b| (a.1, a.0).cmp(&(b.1, b.0)));
        let mut cat = Catalogue::default();
        for (mid, name) in rows {
            cat.by_mid.insert(mid.to_owned(), cat.classes.len());
            cat.classes.push(ClassInfo {
                mid: mid.to_owned(),
                name: name.to_owned(),
                segmentable: seg.contains(mid),
                counts: BTreeMap::new(),
            });
        }
        cat.masks_known = cat.classes.iter().any(|c| c.segmentable);
        for (p, c, kind) in edges {
            if cat.by_mid.contains_key(p) && cat.by_mid.contains_key(c) {
                cat.children
                    .entry(p.clone())
                    .or_default()
                    .push((c.clone(), *kind));
                cat.parents
                    .entry(c.clone())
                    .or_default()
                    .push((p.clone(), *kind));
            }
        }
        cat
    }

    /// Where the class files came from.
    pub fn source(&self) -> CatalogueSource {
        self.source
    }

    /// Whether the catalogue knows which classes have masks: always once downloaded; not from a
    /// built-in copy without the segmentation list ([`builtin`]). When unknown, every class is
    /// `segmentable: false` and the UI lets any class be picked.
    pub fn masks_known(&self) -> bool {
        self.masks_known
    }

    /// Why this load used the built-in class files instead of downloading them (the network
    /// error), when it did.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    /// Reads the catalogue from an index.
    pub fn from_index(index: &Index) -> Result<Self, Error> {
        let conn = index.conn();
        let mut cat = Catalogue::default();
        if index.meta(CATALOGUE_KEY)?.as_deref() == Some(BUILTIN_VALUE) {
            cat.source = CatalogueSource::BuiltIn;
        }
        let mut ids: HashMap<i64, String> = HashMap::new();
        let mut stmt = conn.prepare(
            "SELECT id, mid, name, segmentable FROM classes WHERE name IS NOT NULL ORDER BY name, mid",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, bool>(3)?,
            ))
        })?;
        for row in rows {
            let (id, mid, name, segmentable) = row?;
            ids.insert(id, mid.clone());
            cat.by_mid.insert(mid.clone(), cat.classes.len());
            cat.classes.push(ClassInfo {
                mid,
                name,
                segmentable,
                counts: BTreeMap::new(),
            });
        }
        cat.masks_known = cat.classes.iter().any(|c| c.segmentable);
        let mut stmt = conn.prepare("SELECT parent, child, kind FROM edges")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        for row in rows {
            let (p, c, kind) = row?;
            let kind = if kind == "part" {
                EdgeKind::Part
            } else {
                EdgeKind::Subcategory
            };
            if let (Some(p), Some(c)) = (ids.get(&p), ids.get(&c)) {
                cat.children
                    .entry(p.clone())
                    .or_default()
                    .push((c.clone(), kind));
                cat.parents
                    .entry(c.clone())
                    .or_default()
                    .push((p.clone(), kind));
            }
        }
        for split in Split::ALL {
            if !index.is_indexed(split)? {
                continue;
            }
            cat.indexed.push(split);
            for (id, (images, masks)) in index.counts(split)? {
                if let Some(&i) = ids.get(&id).and_then(|m| cat.by_mid.get(m)) {
                    cat.classes[i]
                        .counts
                        .insert(split, ClassCounts { images, masks });
                }
            }
        }
        Ok(cat)
    }

    /// All classes, sorted by name.
    pub fn classes(&self) -> &[ClassInfo] {
        &self.classes
    }

    /// Splits whose counts are known.
    pub fn indexed_splits(&self) -> &[Split] {
        &self.indexed
    }

    /// The class with this MID.
    pub fn get(&self, mid: &str) -> Option<&ClassInfo> {
        self.by_mid.get(mid).map(|&i| &self.classes[i])
    }

    /// Direct children (both edge kinds).
    pub fn children(&self, mid: &str) -> &[(String, EdgeKind)] {
        self.children.get(mid).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Direct parents (a DAG: possibly several).
    pub fn parents(&self, mid: &str) -> &[(String, EdgeKind)] {
        self.parents.get(mid).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Case-insensitive substring search over display names (and exact MIDs), ranked: exact
    /// name, name prefix, word prefix, then other substrings; ties by name.
    pub fn search(&self, query: &str) -> Vec<&ClassInfo> {
        let q = query.trim().to_lowercase();
        let mut hits: Vec<(u8, &ClassInfo)> = self
            .classes
            .iter()
            .filter_map(|c| {
                let name = c.name.to_lowercase();
                let rank = if q.is_empty() {
                    3
                } else if name == q || c.mid == query.trim() {
                    0
                } else if name.starts_with(&q) {
                    1
                } else if name.match_indices(&q).any(|(i, _)| {
                    name[..i]
                        .chars()
                        .last()
                        .is_some_and(|ch| !ch.is_alphanumeric())
                }) {
                    2
                } else if name.contains(&q) {
                    3
                } else {
                    return None;
                };
                Some((rank, c))
            })
            .collect();
        hits.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.name.cmp(&b.1.name)));
        hits.into_iter().map(|(_, c)| c).collect()
    }

    /// Segmentable classes below `mid` through `Subcategory` edges (DAG-safe, sorted by name;
    /// `Part` edges are not followed: asking for Car does not bring Wheel).
    pub fn segmentable_descendants(&self, mid: &str) -> Vec<&ClassInfo> {
        let mut seen = HashSet::new();
        let mut queue = VecDeque::from([mid.to_owned()]);
        let mut out = Vec::new();
        while let Some(m) = queue.pop_front() {
            for (child, kind) in self.children(&m) {
                if *kind == EdgeKind::Subcategory && seen.insert(child.clone()) {
                    if let Some(c) = self.get(child).filter(|c| c.segmentable) {
                        out.push(c);
                    }
                    queue.push_back(child.clone());
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Resolves a display name (case-insensitive) or MID to segmentable classes: the class
    /// itself when it has masks, else its segmentable descendants ("Fast food" → Hot dog,
    /// French fries, ...).
    pub fn resolve(&self, name_or_mid: &str) -> Result<Vec<&ClassInfo>, Error> {
        let key = name_or_mid.trim();
        let lower = key.to_lowercase();
        let matches: Vec<&ClassInfo> = self
            .classes
            .iter()
            .filter(|c| c.mid == key || c.name.to_lowercase() == lower)
            .collect();
        if matches.is_empty() {
            return Err(Error::UnknownClass {
                name: key.to_owned(),
                suggestions: self
                    .search(key)
                    .iter()
                    .take(5)
                    .map(|c| c.name.clone())
                    .collect(),
            });
        }
        let mut out: Vec<&ClassInfo> = Vec::new();
        for c in matches {
            if c.segmentable {
                out.push(c);
            } else {
                out.extend(self.segmentable_descendants(&c.mid));
            }
        }
        let mut seen = HashSet::new();
        out.retain(|c| seen.insert(c.mid.clone()));
        if out.is_empty() {
            return Err(Error::NotSegmentable(key.to_owned()));
        }
        Ok(out)
    }

    /// Estimated download for up to `max_samples` images per class and split (all images when
    /// `None`); overlaps between classes are not subtracted, so this is an upper bound.
    pub fn estimate(
        &self,
        mids: &[&str],
        splits: &[Split],
        max_samples: Option<u64>,
    ) -> SizeEstimate {
        let mut est = SizeEstimate::default();
        for mid in mids {
            let Some(c) = self.get(mid) else { continue };
            for split in splits {
                let Some(n) = c.counts.get(split) else {
                    continue;
                };
                let images = max_samples.map_or(n.images, |m| m.min(n.images));
                let masks = (n.masks * images).checked_div(n.images).unwrap_or(0);
                est.images += images;
                est.masks += masks;
                est.image_bytes += images * split.avg_image_bytes();
                est.mask_bytes += masks * MASK_BYTES_ESTIMATE;
            }
        }
        est
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HIER: &str = r#"{"LabelName": "/m/0bl9f", "Subcategory": [
        {"LabelName": "/m/02wbm", "Subcategory": [
            {"LabelName": "/m/01_bhs", "Subcategory": [{"LabelName": "/m/01b9xk"}, {"LabelName": "/m/02y6n"}]},
            {"LabelName": "/m/02y6n"}]},
        {"LabelName": "/m/0k4j", "Part": [{"LabelName": "/m/083wq"}]}]}"#;

    fn catalogue(desc: &str) -> Catalogue {
        let dir = tempfile::tempdir().unwrap();
        let mut index = Index::open(dir.path()).unwrap();
        let names = parse_class_descriptions(desc.as_bytes(), "d").unwrap();
        let seg = parse_segmentation_classes("/m/01b9xk\n/m/02y6n\n/m/0k4j\n/m/083wq\n");
        let edges = parse_hierarchy(HIER.as_bytes(), "h").unwrap();
        store_catalogue(
            &mut index,
            &names,
            &seg,
            &edges,
            CatalogueSource::Downloaded,
        )
        .unwrap();
        Catalogue::from_index(&index).unwrap()
    }

    const V5: &str = "/m/01b9xk,Hot dog\n/m/01_bhs,Fast food\n/m/02wbm,Food\n/m/02y6n,French fries\n/m/0k4j,Car\n/m/083wq,Wheel\n/m/0x,\"Dog, hot \"\"style\"\"\"\n";

    #[test]
    fn header_or_not() {
        let v5 = parse_class_descriptions(V5.as_bytes(), "v5").unwrap();
        let v7 = parse_class_descriptions(format!("LabelName,DisplayName\n{V5}").as_bytes(), "v7")
            .unwrap();
        assert_eq!(v5, v7);
        assert_eq!(v5[6].1, "Dog, hot \"style\"");
    }

    #[test]
    fn search_resolve_expand() {
        let cat = catalogue(V5);
        let names: Vec<_> = cat.search("HOT").iter().map(|c| c.name.clone()).collect();
        assert_eq!(names, vec!["Hot dog", "Dog, hot \"style\""]);
        let resolved = |q: &str| -> Vec<String> {
            cat.resolve(q)
                .unwrap()
                .iter()
                .map(|c| c.name.clone())
                .collect()
        };
        assert_eq!(resolved("fast FOOD"), vec!["French fries", "Hot dog"]);
        assert_eq!(cat.resolve("/m/01b9xk").unwrap()[0].name, "Hot dog");
        assert_eq!(resolved("car"), vec!["Car"]);
        assert!(matches!(
            cat.resolve("Hot dgo"),
            Err(Error::UnknownClass { .. })
        ));
        assert_eq!(cat.parents("/m/02y6n").len(), 2);
        assert_eq!(cat.get(ROOT_MID).unwrap().name, "Entity");
        assert!(matches!(cat.resolve("Entity").map(|v| v.len()), Ok(3)));
    }

    #[test]
    fn a_class_file_over_the_limit_leaves_the_built_in_list() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::new(dir.path().to_path_buf());
        cfg.attempts = 1;
        cfg.gcs_base = super::super::http::oversized_server(Some(MAX_CLASS_FILE_BYTES + 1), 0);
        let mut index = Index::open(dir.path()).unwrap();
        let http = Http::new(&cfg);
        let (cancel, counter) = (CancelToken::default(), AtomicU64::new(0));
        let reason = ensure_in_index(&http, &cfg, &mut index, &cancel, &counter).unwrap();
        assert!(
            reason.as_deref().is_some_and(|r| r.contains("limit")),
            "{reason:?}"
        );
        let cat = Catalogue::from_index(&index).unwrap();
        assert_eq!(cat.source(), CatalogueSource::BuiltIn);
        assert!(!cfg.file_path(CLASS_DESCRIPTIONS).exists());
    }
}
