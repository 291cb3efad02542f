//! Compiles our own kernels (kernels/) when there are any, and sets a cfg per backend.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo::rustc-check-cfg=cfg(nijigen_cuda)");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        println!("cargo:rustc-cfg=nijigen_cuda");
    }
    let c_sources: Vec<_> = std::fs::read_dir("kernels")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "c"))
                .collect()
        })
        .unwrap_or_default();
    if !c_sources.is_empty() {
        cc::Build::new()
            .files(&c_sources)
            .opt_level(3)
            .compile("nijigen_kernels");
    }
}
