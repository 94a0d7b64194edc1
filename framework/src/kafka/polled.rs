//! A producer whose events (delivery reports, errors) are served by a thread of its own.
//!
//! rust-rdkafka's `ThreadedProducer` does this in 100 ms windows, and
//! `BaseProducer::poll` hands librdkafka the time left in whole milliseconds, so through
//! the last fraction of a millisecond of every window it polls with a zero timeout in a
//! tight loop: about 1% of a core per producer while the app is idle. Windows five times
//! as long cost a fifth of that; dropping the producer waits for the current window.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::producer::{BaseProducer, ProducerContext};

/// How long one poll call waits for events before the thread checks whether to stop.
const WINDOW: Duration = Duration::from_millis(500);

/// A [`BaseProducer`] and the thread that serves its events until it is dropped; on drop
/// the producer purges and fails what it still holds, as `ThreadedProducer` does.
pub struct PolledProducer<C: ProducerContext + 'static> {
    producer: Arc<BaseProducer<C>>,
    stop: Arc<AtomicBool>,
    poller: Option<JoinHandle<()>>,
}

impl<C: ProducerContext + 'static> PolledProducer<C> {
    pub fn create(config: &ClientConfig, context: C) -> KafkaResult<Self> {
        let producer: Arc<BaseProducer<C>> = Arc::new(config.create_with_context(context)?);
        let stop = Arc::new(AtomicBool::new(false));
        let poller = {
            let (producer, stop) = (producer.clone(), stop.clone());
            std::thread::Builder::new()
                .name("tributary-produce-poll".into())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        producer.poll(WINDOW);
                    }
                })
                .map_err(|e| {
                    KafkaError::ClientCreation(format!("cannot start the producer's poll thread: {e}"))
                })?
        };
        Ok(Self {
            producer,
            stop,
            poller: Some(poller),
        })
    }
}

impl<C: ProducerContext + 'static> std::ops::Deref for PolledProducer<C> {
    type Target = BaseProducer<C>;

    fn deref(&self) -> &Self::Target {
        &self.producer
    }
}

impl<C: ProducerContext + 'static> Drop for PolledProducer<C> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(poller) = self.poller.take() {
            let _ = poller.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use rdkafka::ClientContext;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseRecord, DeliveryResult, Producer};

    use super::*;

    struct Counting(Arc<AtomicUsize>);

    impl ClientContext for Counting {}

    impl ProducerContext for Counting {
        type DeliveryOpaque = ();

        fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
            if result.is_ok() {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// Delivery reports arrive without anyone but the poll thread polling, and a drop
    /// stops that thread.
    #[test]
    fn the_poll_thread_serves_delivery_reports_until_dropped() {
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic("t", 1, 1).expect("topic");
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", cluster.bootstrap_servers());
        let delivered = Arc::new(AtomicUsize::new(0));
        let producer = PolledProducer::create(&config, Counting(delivered.clone())).expect("producer");
        for _ in 0..3 {
            producer
                .send(BaseRecord::<(), [u8]>::to("t").payload(b"x"))
                .expect("queued");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while delivered.load(Ordering::SeqCst) < 3 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(delivered.load(Ordering::SeqCst), 3);
        assert_eq!(producer.in_flight_count(), 0);
        let started = std::time::Instant::now();
        drop(producer);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the drop waited {:?}",
            started.elapsed()
        );
    }
}
