//! Messages waiting for their retry time.

use super::*;

#[tokio::test(start_paused = true)]
async fn retries_wait_until_due_and_drop_their_body() {
    let queue = queue();
    let start = Instant::now();
    queue.retry_at(item("late", Some(10)), start + Duration::from_secs(60));
    queue.retry_at(item("early", None), start + Duration::from_secs(30));
    assert!(next_within(&queue, Duration::from_secs(29)).await.is_none());
    let early = queue.next().await;
    assert_eq!(early.message.id, "early");
    assert_eq!(Instant::now() - start, Duration::from_secs(30));
    let late = queue.next().await;
    assert_eq!(
        (late.message.id.as_str(), late.body.is_none()),
        ("late", true)
    );
    assert_eq!(Instant::now() - start, Duration::from_secs(60));
}
