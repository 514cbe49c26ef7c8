// `trypema_redis`: one of the Redis runtime features is enabled (the redis and hybrid
// providers exist). Spelled once here instead of `any(feature = …, feature = …)` everywhere.
fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rustc-check-cfg=cfg(trypema_redis)");
    let tokio = std::env::var_os("CARGO_FEATURE_REDIS_TOKIO").is_some();
    let smol = std::env::var_os("CARGO_FEATURE_REDIS_SMOL").is_some();
    if tokio || smol {
        println!("cargo::rustc-cfg=trypema_redis");
    }
}
