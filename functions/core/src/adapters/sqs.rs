//! [`WorkQueue`] over Amazon SQS (`aws-sdk-sqs`; `AWS_ENDPOINT_URL` points
//! it at moto locally). SendMessage has a timeout; the SDK's standard mode
//! retries transient errors inside it.

use std::time::Duration;

use std::sync::Arc;

use crate::ports::queue::{QueueError, WorkQueue, WorkQueues};

/// Opens fan-out queues over one SQS client.
#[derive(Clone)]
pub struct SqsQueues {
    client: aws_sdk_sqs::Client,
}

impl SqsQueues {
    pub fn new(sdk: &aws_config::SdkConfig) -> Self {
        Self {
            client: aws_sdk_sqs::Client::new(sdk),
        }
    }
}

impl WorkQueues for SqsQueues {
    fn open(&self, url: &str) -> Arc<dyn WorkQueue> {
        Arc::new(SqsWorkQueue {
            client: self.client.clone(),
            queue_url: url.to_owned(),
        })
    }
}

/// A fan-out route's queue.
pub struct SqsWorkQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl SqsWorkQueue {
    pub fn new(sdk: &aws_config::SdkConfig, queue_url: impl Into<String>) -> Self {
        Self {
            client: aws_sdk_sqs::Client::new(sdk),
            queue_url: queue_url.into(),
        }
    }
}

#[async_trait::async_trait]
impl WorkQueue for SqsWorkQueue {
    async fn send(
        &self,
        body: &str,
        group: Option<&str>,
        dedup_id: &str,
    ) -> Result<String, QueueError> {
        let err = |reason: String| QueueError {
            queue: self.queue_url.clone(),
            reason,
        };
        let mut req = self
            .client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body);
        if let Some(g) = group {
            req = req.message_group_id(g).message_deduplication_id(dedup_id);
        }
        let out = tokio::time::timeout(Duration::from_secs(20), req.send())
            .await
            .map_err(|_| err("SendMessage timed out after 20 s".into()))?
            .map_err(|e| err(aws_sdk_sqs::error::DisplayErrorContext(&e).to_string()))?;
        Ok(out.message_id().unwrap_or_default().to_owned())
    }

    async fn backlog(&self) -> Result<u64, QueueError> {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let err = |reason: String| QueueError {
            queue: self.queue_url.clone(),
            reason,
        };
        let req = self
            .client
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(A::ApproximateNumberOfMessages)
            .attribute_names(A::ApproximateNumberOfMessagesNotVisible);
        let out = tokio::time::timeout(Duration::from_secs(20), req.send())
            .await
            .map_err(|_| err("GetQueueAttributes timed out after 20 s".into()))?
            .map_err(|e| err(aws_sdk_sqs::error::DisplayErrorContext(&e).to_string()))?;
        let attrs = out.attributes();
        let count = |a: A| -> Result<u64, QueueError> {
            match attrs.and_then(|m| m.get(&a)) {
                Some(v) => v
                    .parse()
                    .map_err(|_| err(format!("{a} is not a number: {v:?}"))),
                None => Err(err(format!("GetQueueAttributes did not return {a}"))),
            }
        };
        Ok(count(A::ApproximateNumberOfMessages)?
            + count(A::ApproximateNumberOfMessagesNotVisible)?)
    }

    fn url(&self) -> &str {
        &self.queue_url
    }
}
