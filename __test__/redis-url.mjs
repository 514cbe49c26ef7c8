// The Redis the tests share: TRYPEMA_TEST_REDIS_URL, which `npm test` sets after starting a
// private redis-server. Without it the tests fail with a message rather than skip silently;
// set TRYPEMA_TEST_ALLOW_SKIP=1 to skip them explicitly.
export function testRedisUrl() {
  const url = process.env.TRYPEMA_TEST_REDIS_URL
  if (!url) {
    throw new Error(
      'TRYPEMA_TEST_REDIS_URL is not set: run `npm test` (it starts a private redis-server), or start ' +
        "one (redis-server --port 6400 --save '') and set TRYPEMA_TEST_REDIS_URL=redis://127.0.0.1:6400/",
    )
  }
  return url
}
