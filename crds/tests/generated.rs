//! The committed CRD YAML is exactly what the Rust types generate.

use std::path::PathBuf;

#[test]
fn committed_crds_match_the_types() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("yaml");
    let update = std::env::var_os("CORRAL_UPDATE_CRDS").is_some();
    let mut stale = Vec::new();
    for (file, definition) in corral_crds::definitions() {
        let expected = corral_crds::render(&definition);
        let path = dir.join(file);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed != expected {
            if update {
                std::fs::write(&path, &expected).unwrap();
            } else {
                stale.push(file);
            }
        }
    }
    assert!(
        stale.is_empty(),
        "stale CRD files {stale:?}: run `CORRAL_UPDATE_CRDS=1 cargo test -p corral-crds` and commit crds/yaml/"
    );
}

#[test]
fn embedded_manifests_are_the_committed_files() {
    let generated: Vec<_> = corral_crds::definitions()
        .into_iter()
        .map(|(file, definition)| (file, corral_crds::render(&definition)))
        .collect();
    for ((file, text), (generated_file, generated_text)) in
        corral_crds::MANIFESTS.iter().zip(&generated)
    {
        assert_eq!(file, generated_file);
        assert_eq!(*text, generated_text, "{file} is stale");
    }
}
