/// Milliseconds since the limiter was built. Backed by `quanta`, whose TSC reads are several
/// times cheaper than `Instant::now()` and which can be swapped for a mock in tests.
#[derive(Clone, Debug)]
pub(crate) struct Clock {
    source: quanta::Clock,
    origin: quanta::Instant,
}

impl Clock {
    pub(crate) fn new(source: quanta::Clock) -> Self {
        let origin = source.now();
        Self { source, origin }
    }

    #[inline]
    pub(crate) fn now_ms(&self) -> u64 {
        self.source
            .now()
            .saturating_duration_since(self.origin)
            .as_millis() as u64
    }
}
