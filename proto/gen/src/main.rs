//! `cargo run -p tikv-proto-gen` rewrites `proto/src/generated/`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = tikv_proto_gen::proto_dir().join("src").join("generated");
    tikv_proto_gen::generate(&out)?;
    println!("regenerated {}", out.display());
    Ok(())
}
