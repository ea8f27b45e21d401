//! The Open Images class files built into the binary, byte for byte as Google publishes them,
//! so the Classes tab, `maskstudio classes` and downloads list, search and browse the classes
//! offline and at once: the 601 boxable classes with display names and the hierarchy (together
//! ~100 kB). The network copy replaces them in the cache index whenever it answers
//! ([`super::catalogue::CatalogueSource`]).
//!
//! The third file, the 350 classes with masks (`v5/classes-segmentation.txt`), could not be
//! obtained where this was built (no copy reachable; `builtin/README.md`): its built-in copy is
//! empty until `scripts/update-oi-class-files.sh` fetches and verifies it, and an empty list
//! means "which classes have masks is not known offline" ([`super::Catalogue::masks_known`]).
//!
//! Provenance: `builtin/README.md` names each file's URL, size and MD5 (the official ones, from
//! `docs/openimages.md` §2.1); the test below pins their SHA-256 so an edit cannot slip in.

/// What the built-in files are, for the UI and `maskstudio classes`.
pub const VERSION: &str =
    "Open Images V5/V6 class files: boxable class names of 2019-05, hierarchy of 2018-04";

/// `v5/class-descriptions-boxable.csv` (no header; 601 rows).
pub(crate) const BOXABLE: &[u8] = include_bytes!("builtin/class-descriptions-boxable.csv");
/// `v5/classes-segmentation.txt` (350 MIDs), empty when not fetched yet.
pub(crate) const SEGMENTATION: &[u8] = include_bytes!("builtin/classes-segmentation.txt");
/// `2018_04/bbox_labels_600_hierarchy.json`.
pub(crate) const HIERARCHY: &[u8] = include_bytes!("builtin/bbox_labels_600_hierarchy.json");

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::openimages::Catalogue;
    use crate::openimages::catalogue::ROOT_MID;

    fn sha256(bytes: &[u8]) -> String {
        Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The files are the official ones: sizes and MD5 from `docs/openimages.md` §2.1 matched
    /// these bytes when they were added (`builtin/README.md`); SHA-256 pins them since.
    #[test]
    fn built_in_files_are_the_official_bytes() {
        for (name, bytes, size, hash) in [
            (
                "boxable",
                BOXABLE,
                12_011,
                "2fa47fb1b87e71c90b9fbee2dc1184eb8c59601bb811ea4424b200653cedff8e",
            ),
            (
                "hierarchy",
                HIERARCHY,
                89_038,
                "dbfb4df453228c95d4154772b615ec65a787abd5d451b8d20c4ba08a4041f3a6",
            ),
        ] {
            assert_eq!(bytes.len(), size, "{name}: size");
            assert_eq!(sha256(bytes), hash, "{name}: sha256");
        }
        // Not fetched (empty), or the official 350-line file.
        assert!(
            SEGMENTATION.is_empty() || SEGMENTATION.len() == 3_352,
            "classes-segmentation.txt: {} bytes",
            SEGMENTATION.len()
        );
    }

    #[test]
    fn built_in_catalogue_lists_601_classes_and_the_hot_dog_path() {
        let cat = Catalogue::builtin().unwrap();
        // 601 boxable classes plus the hierarchy root.
        assert_eq!(cat.classes().len(), 602);
        let with_masks = cat.classes().iter().filter(|c| c.segmentable).count();
        if cat.masks_known() {
            assert_eq!(with_masks, 350);
        } else {
            assert_eq!(with_masks, 0, "no guessing which classes have masks");
        }
        assert_eq!(cat.source(), crate::openimages::CatalogueSource::BuiltIn);
        assert_eq!(cat.get("/m/01b9xk").unwrap().name, "Hot dog");
        // Names renamed in V5 are the V5 ones (docs §2.1: the V4 file differs in 16 names).
        assert_eq!(
            cat.get("/m/054xkw").unwrap().name,
            "Personal flotation device"
        );
        // Hot dog ⊂ Fast food ⊂ Food ⊂ Entity (docs §3.5).
        let parents = |mid: &str| -> Vec<String> {
            cat.parents(mid).iter().map(|(p, _)| p.clone()).collect()
        };
        assert!(parents("/m/01b9xk").contains(&"/m/01_bhs".to_owned()));
        assert!(parents("/m/01_bhs").contains(&"/m/02wbm".to_owned()));
        assert!(parents("/m/02wbm").contains(&ROOT_MID.to_owned()));
        assert_eq!(cat.get(ROOT_MID).unwrap().name, "Entity");
        assert!(cat.indexed_splits().is_empty());
        let hot: Vec<&str> = cat
            .search("hot d")
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(hot, ["Hot dog"]);
        // Every boxable class sits somewhere in the hierarchy.
        let orphans = cat
            .classes()
            .iter()
            .filter(|c| c.mid != ROOT_MID && cat.parents(&c.mid).is_empty())
            .count();
        assert_eq!(orphans, 0);
    }
}
