//! Generates bindings over the ggml headers that `llama-cpp-sys-2` installed into its OUT_DIR.
//! Linking is done by llama-cpp-sys-2 itself (static ggml libraries, or shared with `cuda`).
use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-changed=build.rs");
    let cmake_dir = env::var("DEP_LLAMA_GGML_CMAKE_DIR").expect(
        "llama-cpp-sys-2 did not export DEP_LLAMA_GGML_CMAKE_DIR (is it pinned to =0.1.161?)",
    );
    // <out>/lib/cmake -> <out>/include
    let include = PathBuf::from(&cmake_dir)
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("include"))
        .expect("unexpected DEP_LLAMA_GGML_CMAKE_DIR layout");
    assert!(
        include.join("ggml.h").is_file(),
        "ggml.h not found in {}",
        include.display()
    );
    println!("cargo:include={}", include.display());

    let mut builder = bindgen::Builder::default()
        .header("wrapper.h")
        .clang_arg(format!("-I{}", include.display()))
        .allowlist_function("ggml_.*")
        .allowlist_function("gguf_.*")
        .allowlist_type("ggml_.*")
        .allowlist_type("gguf_.*")
        .allowlist_var("GGML_.*")
        .allowlist_var("GGUF_.*")
        .default_enum_style(bindgen::EnumVariation::Consts)
        .prepend_enum_name(false)
        .derive_default(true)
        .layout_tests(false)
        .generate_comments(false);
    if env::var_os("CARGO_FEATURE_CUDA").is_some() {
        builder = builder.clang_arg("-DNIJIGEN_CUDA");
    }
    let bindings = builder
        .generate()
        .expect("bindgen failed on the ggml headers");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("bindings.rs");
    bindings.write_to_file(&out).expect("cannot write bindings");
}
