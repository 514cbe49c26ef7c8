//! The Rust quick start from the product spec on smol instead of tokio: the same code, in
//! `smol::block_on`, with the crate's `redis-smol` feature (redis-rs runs its connection on
//! smol when no tokio runtime is current).
//!
//! Needs a Redis server on 127.0.0.1:6379:
//! `cargo run -p trypema --features redis-smol --example quickstart_smol`.

// The snippet is kept exactly as the spec prints it, so rustfmt must not touch it.
#[rustfmt::skip]
fn main() {
    smol::block_on(async {
    use trypema::{RateLimit, RateLimitDecision, RateLimiter};
    use trypema::redis::RedisKey;

    let client = redis::Client::open("redis://127.0.0.1:6379/").unwrap();
    let connection_manager = client.get_connection_manager().await.unwrap();
    let rl = RateLimiter::builder(connection_manager)
        .window_size_seconds(60)
        .rate_group_size_ms(10)
        .hard_limit_factor(1.5)
        .build()
        .unwrap();
    let key = RedisKey::try_from("user_123".to_string()).unwrap();
    let rate = RateLimit::try_from(5.0).unwrap();
    assert!(matches!(rl.redis().absolute().inc(&key, &rate, 1).await.unwrap(), RateLimitDecision::Allowed));
    let _ = rl.redis().suppressed().inc(&key, &rate, 1).await.unwrap();
    let factor = rl.redis().suppressed().get_suppression_factor(&key).await.unwrap();
    assert!(factor >= 0.0);

    // redis-rs chose smol: no tokio runtime was ever current here.
    assert!(tokio::runtime::Handle::try_current().is_err());
    println!("quickstart ok");
    });
}
