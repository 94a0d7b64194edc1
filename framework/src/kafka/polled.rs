//! A producer whose events (delivery reports, errors) are served by a thread of its own.
//!
//! rust-rdkafka's `ThreadedProducer` does this in 100 ms windows, and
//! `BaseProducer::poll` hands librdkafka the time left in whole milliseconds, so through
//! the last fraction of a millisecond of every window it polls with a zero timeout in a
//! tight loop: about 1% of a core per producer while the app is idle. Windows five times
//! as long cost a fifth of that; dropping the producer waits for the current window.
//! [`Confirming`] puts each delivery report into a one-shot channel, as rdkafka's
//! `FutureProducer` (also a `ThreadedProducer`) does.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Message, ToBytes};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, ProducerContext};
use rdkafka::{ClientConfig, ClientContext};

use super::logging::Logged;

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

/// Where a confirmed record's delivery report goes: its (partition, offset) or the error.
pub type Confirmation = tokio::sync::oneshot::Receiver<KafkaResult<(i32, i64)>>;
type Confirm = Box<tokio::sync::oneshot::Sender<KafkaResult<(i32, i64)>>>;

/// A producer context that hands each delivery report to the record's [`Confirmation`]
/// and logs like [`Logged`].
pub struct Confirming(pub Logged);

impl ClientContext for Confirming {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.0.log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.0.error(error, reason);
    }
}

impl ProducerContext for Confirming {
    type DeliveryOpaque = Confirm;

    fn delivery(&self, result: &DeliveryResult<'_>, confirm: Confirm) {
        let outcome = match result {
            Ok(m) => Ok((m.partition(), m.offset())),
            Err((e, _)) => Err(e.clone()),
        };
        let _ = confirm.send(outcome);
    }
}

impl PolledProducer<Confirming> {
    /// Queues `record` without waiting; the [`Confirmation`] gets its delivery report.
    pub fn queue<K, P>(&self, record: BaseRecord<'_, K, P>) -> KafkaResult<Confirmation>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let (confirm, confirmation) = tokio::sync::oneshot::channel();
        self.producer
            .send(with_confirm(record, Box::new(confirm)))
            .map_err(|(e, _)| e)?;
        Ok(confirmation)
    }

    /// Sends `record`, waiting up to `queue_timeout` for room while the local queue is
    /// full, and then for its delivery report.
    pub async fn send<K, P>(
        &self,
        record: BaseRecord<'_, K, P>,
        queue_timeout: Duration,
    ) -> KafkaResult<(i32, i64)>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let (confirm, confirmation) = tokio::sync::oneshot::channel();
        let mut record = with_confirm(record, Box::new(confirm));
        let deadline = Instant::now() + queue_timeout;
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if Instant::now() < deadline =>
                {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err((e, _)) => return Err(e),
            }
        }
        confirmation.await.unwrap_or(Err(KafkaError::Canceled))
    }
}

fn with_confirm<'a, K, P>(r: BaseRecord<'a, K, P>, confirm: Confirm) -> BaseRecord<'a, K, P, Confirm>
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    BaseRecord {
        topic: r.topic,
        partition: r.partition,
        payload: r.payload,
        key: r.key,
        timestamp: r.timestamp,
        headers: r.headers,
        delivery_opaque: confirm,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::Producer;

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

    #[test]
    fn a_confirmed_send_returns_where_the_record_was_written() {
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic("t", 2, 1).expect("topic");
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", cluster.bootstrap_servers());
        let producer = PolledProducer::create(&config, Confirming(Logged("test"))).expect("producer");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let first = rt
            .block_on(producer.send(
                BaseRecord::<str, str>::to("t").partition(1).key("k").payload("a"),
                Duration::from_secs(5),
            ))
            .expect("delivered");
        let queued = producer
            .queue(BaseRecord::<str, str>::to("t").partition(1).payload("b"))
            .expect("queued");
        let second = rt.block_on(queued).expect("a report").expect("delivered");
        assert_eq!((first, second), ((1, 0), (1, 1)));
        // A topic that does not exist fails the delivery, and the confirmation says so.
        let missing = rt.block_on(producer.send(
            BaseRecord::<str, str>::to("t").partition(7).payload("c"),
            Duration::from_secs(5),
        ));
        assert!(missing.is_err(), "{missing:?}");
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
