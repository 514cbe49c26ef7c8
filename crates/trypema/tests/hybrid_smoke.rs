#![cfg(feature = "redis-tokio")]
use std::time::Duration;
use trypema::{redis::RedisKey, RateLimit, RateLimitDecision, RateLimiter};

async fn limiter(window: u64) -> RateLimiter {
    let url = std::env::var("TRYPEMA_TEST_REDIS_URL").expect("TRYPEMA_TEST_REDIS_URL");
    let cm = redis::Client::open(url).unwrap().get_connection_manager().await.unwrap();
    RateLimiter::builder(cm).window_size_seconds(window).rate_group_size_ms(10).redis_prefix(format!("smoke{}", rand::random::<u32>())).build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke() {
    let a = limiter(1).await;
    let key = RedisKey::new("k").unwrap();
    let rate = RateLimit::new(300.0).unwrap();
    let mut allowed = 0;
    let mut rejected = 0;
    for _ in 0..400 {
        match a.hybrid().absolute().inc(&key, &rate, 1).await.unwrap() {
            RateLimitDecision::Allowed => allowed += 1,
            RateLimitDecision::Rejected { .. } => rejected += 1,
            other => panic!("{other:?}"),
        }
    }
    println!("allowed {allowed} rejected {rejected}");
    assert_eq!(allowed, 300);
    let s = RateLimit::new(10.0).unwrap();
    let mut admitted = 0;
    for _ in 0..100 {
        if a.hybrid().suppressed().inc(&key, &s, 1).await.unwrap().is_allowed() { admitted += 1 }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    println!("suppressed admitted {admitted}");
}
