//! Compiles Envoy's `.proto` files (shipped by the envoy-types crate) into one descriptor set that the
//! validator loads: the real schema of every resource and extension Envoy accepts.
//!
//! Each file is compiled with only what it imports, as `protoc` would see it, and the results are
//! merged: compiled together, relative names such as `config.core.v3.DataSource` inside an
//! `envoy.extensions.*` package resolve into an unrelated `envoy.extensions.config` package.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use prost::Message as _;

fn main() {
    let root = envoy_types_dir().join("proto");
    let includes: Vec<PathBuf> = [
        "data-plane-api",
        "googleapis",
        "protoc-gen-validate",
        "xds",
        "cel-spec/proto",
        "opentelemetry-proto",
        "client_model",
        "ratelimit/api",
    ]
    .iter()
    .map(|dir| root.join(dir))
    .collect();
    let envoy = root.join("data-plane-api");
    let mut files = Vec::new();
    collect(&envoy.join("envoy"), &mut files);
    files.sort();

    let mut merged = BTreeMap::new();
    let mut skipped = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&envoy).expect("under data-plane-api");
        let compiled = protox::Compiler::new(&includes).and_then(|mut compiler| {
            compiler.include_imports(true).open_file(relative)?;
            Ok(compiler.encode_file_descriptor_set())
        });
        match compiled {
            Ok(set) => {
                for (name, file) in files_of(&set) {
                    merged.entry(name).or_insert(file);
                }
            }
            Err(error) => skipped.push(format!("{}: {error}", relative.display())),
        }
    }
    for skip in &skipped {
        println!("cargo:warning=envoy schema: skipped {skip}");
    }
    // A FileDescriptorSet is `repeated FileDescriptorProto file = 1`: the files, each as field 1.
    let mut set = Vec::new();
    for file in merged.values() {
        prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, &mut set);
        prost::encoding::encode_varint(file.len() as u64, &mut set);
        set.extend_from_slice(file);
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("envoy.fds");
    std::fs::write(&out, set).expect("write the descriptor set");
    println!("cargo:rerun-if-changed=build.rs");
}

/// The files of an encoded FileDescriptorSet, by name, as encoded bytes. They are kept as bytes
/// because decoding them into `prost_types` would drop the custom options (`validate.rules`) that the
/// validator reads.
fn files_of(mut set: &[u8]) -> Vec<(String, Vec<u8>)> {
    #[derive(Clone, PartialEq, prost::Message)]
    struct FileName {
        #[prost(string, tag = "1")]
        name: String,
    }
    let mut files = Vec::new();
    while !set.is_empty() {
        let (tag, wire_type) = prost::encoding::decode_key(&mut set).expect("a field key");
        assert_eq!(
            (tag, wire_type),
            (1, prost::encoding::WireType::LengthDelimited)
        );
        let length = usize::try_from(prost::encoding::decode_varint(&mut set).expect("a length"))
            .expect("a file fits in memory");
        let (file, rest) = set.split_at(length);
        let name = FileName::decode(file).expect("a file descriptor").name;
        files.push((name, file.to_vec()));
        set = rest;
    }
    files
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read proto dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            files.push(path);
        }
    }
}

/// The source folder of the envoy-types package this workspace locks.
fn envoy_types_dir() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    let target = std::env::var("TARGET").expect("TARGET");
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--filter-platform",
            &target,
        ])
        .current_dir(&manifest_dir)
        .output()
        .expect("run cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata output");
    let manifest = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|package| package["name"] == "envoy-types")
        .and_then(|package| package["manifest_path"].as_str())
        .expect("envoy-types is a build dependency");
    Path::new(manifest)
        .parent()
        .expect("package dir")
        .to_path_buf()
}
