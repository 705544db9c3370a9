//! The probe loop against a real Azurite queue, with the exact replica writes it makes.

#![allow(clippy::unwrap_used)] // test helpers: a failed step should fail the test loudly

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cqrs_operator::autoscale::{
    ScaleObserver, ScaleTarget, TargetError, Tick, WorkerScaling, probe_loop,
};
use cqrs_operator::crd::{ScalingBehavior, ScalingSpec};
use cqrs_storage::azurite::{TestAzurite, unique_name};

/// A scale target in memory that records every write.
#[derive(Default)]
struct Recorded {
    replicas: Mutex<i32>,
    writes: Mutex<Vec<i32>>,
}

#[async_trait]
impl ScaleTarget for Recorded {
    async fn current_replicas(&self) -> Result<i32, TargetError> {
        Ok(*self.replicas.lock().unwrap())
    }
    async fn set_replicas(&self, replicas: i32) -> Result<(), TargetError> {
        *self.replicas.lock().unwrap() = replicas;
        self.writes.lock().unwrap().push(replicas);
        Ok(())
    }
    async fn set_rate_share(&self, _: Option<f64>) -> Result<(), TargetError> {
        Ok(())
    }
}

struct Quiet;

impl ScaleObserver for Quiet {
    fn on_tick(&self, _: &Tick) {}
}

async fn wait_for(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting to {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_probe_loop_follows_a_real_queue_up_and_back_down() {
    let azurite = TestAzurite::start().await;
    let account = azurite.account();
    let queue = unique_name("scale");
    account.ensure_queue(&queue).await.unwrap();
    let client_queue = account.queue(&queue).unwrap();
    for i in 0..60 {
        let msg = azure_storage_queue::models::QueueMessage {
            message_text: Some(format!("m{i}")),
        };
        client_queue
            .send_message(msg.try_into().unwrap(), None)
            .await
            .unwrap();
    }
    let settings = WorkerScaling {
        worker: "registrar".into(),
        queue: queue.clone(),
        scaling: ScalingSpec {
            min_replicas: 0,
            max_replicas: 5,
            target_queue_length: 10,
            polling_interval: 1,
            cooldown_period: 2,
            scale_down: ScalingBehavior {
                stabilization_window_seconds: Some(0),
                ..Default::default()
            },
            ..ScalingSpec::default()
        },
        max_messages_per_second: None,
    };
    let (tx, rx) = tokio::sync::watch::channel(settings);
    let target = Arc::new(Recorded::default());
    let task = tokio::spawn(probe_loop(
        rx,
        Arc::new(account.clone()),
        target.clone(),
        Arc::new(Quiet),
    ));

    let replicas = || *target.replicas.lock().unwrap();
    wait_for("scale up to maxReplicas", || replicas() == 5).await;
    client_queue.clear(None).await.unwrap();
    wait_for("scale back to zero after the cooldown", || replicas() == 0).await;
    drop(tx);
    task.await.unwrap();
    // Up by the default step (4), then to the cap; down to 1 while cooling, then to 0.
    assert_eq!(*target.writes.lock().unwrap(), [4, 5, 1, 0]);
}
