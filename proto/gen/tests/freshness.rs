//! The committed generated code equals what the generator produces now.

#[test]
fn committed_generated_code_is_fresh() {
    let dir = std::env::temp_dir().join(format!("tikv-proto-gen-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    tikv_proto_gen::generate(&dir).expect("generation succeeds");
    let committed = tikv_proto_gen::proto_dir().join("src").join("generated");
    let mut stale = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .expect("output dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    assert!(!names.is_empty());
    for name in &names {
        let fresh = std::fs::read(dir.join(name)).expect("fresh file");
        let old = std::fs::read(committed.join(name)).unwrap_or_default();
        if fresh != old {
            stale.push(name.to_string_lossy().into_owned());
        }
    }
    let committed_count = std::fs::read_dir(&committed).expect("committed dir").count();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        stale.is_empty(),
        "generated code is stale for {stale:?}: run `cargo run -p tikv-proto-gen` and commit"
    );
    assert_eq!(committed_count, names.len(), "committed and generated file sets differ");
}
