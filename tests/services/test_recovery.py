"""Lost work found again: the broker is asked what waits in a queue."""

from gallery import queues, services


def test_stall_check_sees_messages_waiting_in_the_queue(redis_url):
    """A job waiting behind queued work is not stalled: the check looks at the queue."""
    import redis as redis_client

    from searchsite.celery import app

    url = redis_url.rsplit("/", 1)[0] + "/12"  # a broker database no worker consumes
    redis_client.Redis.from_url(url).flushdb()
    assert services.queue_has_work(queues.EMBED, url) is False
    with app.connection_for_write(url) as conn:
        conn.SimpleQueue(queues.EMBED).put({"waiting": True})
    assert services.queue_has_work(queues.EMBED, url) is True
    assert services.queue_has_work(queues.EMBED, "redis://127.0.0.1:1/0") is True  # cannot ask: assume busy
    redis_client.Redis.from_url(url).flushdb()
