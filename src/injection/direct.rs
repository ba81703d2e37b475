//! Direct injection: one valid payload → the conversation's connected agent participant
//! → participant data, in one process and without the service. `gc-assist inject` and the
//! demo run it; the service's participant-data channel reuses its pieces.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use thiserror::Error;
use uuid::Uuid;

use super::participant_data::{self, PromptAttribute};
use crate::audit::AuditDraft;
use crate::contract::{PromptContent, ValidPayload};
use crate::genesys::{GenesysClient, GenesysError};

/// Why a direct injection did not reach the agent.
#[derive(Debug, Error)]
pub enum DirectError {
    #[error(
        "conversation {conversation_id} has no connected agent participant (purpose \"agent\" with a connected call); \
         prompts can only be shown while an agent is on the conversation"
    )]
    NoConnectedAgent { conversation_id: String },
    #[error(
        "409 Conflict: the agent already has {shown} prompt(s) on screen and maxConcurrentPrompts is {max}; \
         the earliest frees in {retry_after_ms} ms. Wait for it to auto-dismiss, or send onCapacity \"queue\" \
         with a queueTimeoutMs long enough"
    )]
    Capacity { shown: usize, max: u8, retry_after_ms: u64 },
    #[error("conversation {conversation_id} was not found (404): check the conversationId and that the OAuth client's role can view conversations in its division")]
    ConversationNotFound { conversation_id: String, source: GenesysError },
    #[error(transparent)]
    Genesys(#[from] GenesysError),
}

impl DirectError {
    /// The HTTP-like status the tutorial would have seen for this failure.
    pub fn status(&self) -> Option<u16> {
        match self {
            DirectError::NoConnectedAgent { .. } => Some(409),
            DirectError::Capacity { .. } => Some(409),
            DirectError::ConversationNotFound { .. } => Some(404),
            DirectError::Genesys(e) => e.status(),
        }
    }
}

/// How the injector behaves.
#[derive(Debug, Clone)]
pub struct DirectOptions {
    /// Wait `delayMs` before writing, as the panel would before showing. Off in tests
    /// that only care about the write.
    pub honour_delay: bool,
    /// Prefix of the attribute keys (config `inject.attribute_prefix`).
    pub attribute_prefix: String,
}

impl Default for DirectOptions {
    fn default() -> Self {
        DirectOptions { honour_delay: true, attribute_prefix: "gcAssist".into() }
    }
}

/// A prompt written into the agent participant's attributes.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub injection_id: Uuid,
    pub conversation_id: String,
    pub participant_id: String,
    pub agent_user_id: Option<String>,
    pub accepted_at: DateTime<Utc>,
    /// Request to 2xx, excluding the deliberate `delayMs` wait.
    pub latency_ms: u64,
    pub prompt: PromptAttribute,
    /// The attributes that were PATCHed.
    pub attributes: std::collections::BTreeMap<String, String>,
    /// How long the injection waited in the queue for a free slot.
    pub queued_ms: u64,
}

/// Delivers prompts straight into participant data.
#[derive(Debug, Clone)]
pub struct DirectInjector {
    client: GenesysClient,
    options: DirectOptions,
}

impl DirectInjector {
    pub fn new(client: GenesysClient, options: DirectOptions) -> Self {
        DirectInjector { client, options }
    }

    /// The Genesys client this injector writes through.
    pub fn client(&self) -> &GenesysClient {
        &self.client
    }

    /// Resolve the connected agent, enforce the attention limits the agent's attributes
    /// show, wait `delayMs`, and write the prompt.
    pub async fn inject(
        &self,
        injection_id: Uuid,
        payload: &ValidPayload,
        content: &PromptContent,
    ) -> Result<Delivered, DirectError> {
        let accepted_at = Utc::now();
        let started = Instant::now();
        let conversation_id = payload.conversation_id().to_string();
        let display = payload.display();
        let prefix = &self.options.attribute_prefix;
        let queue_deadline = started + Duration::from_millis(payload.queue_timeout_ms());
        let mut waited = Duration::ZERO;

        let (participant_id, agent_user_id) = loop {
            let conversation = self.client.get_conversation(&conversation_id).await.map_err(|e| {
                if e.status() == Some(404) {
                    DirectError::ConversationNotFound { conversation_id: conversation_id.clone(), source: e }
                } else {
                    DirectError::Genesys(e)
                }
            })?;
            let agent = conversation
                .connected_agent()
                .ok_or_else(|| DirectError::NoConnectedAgent { conversation_id: conversation_id.clone() })?;
            let participant_id = agent.id.clone();
            let existing = participant_data::read_prompts(prefix, &agent.attributes);
            let now = Utc::now();
            let (shown, earliest) = participant_data::occupancy(&existing, now);
            if shown < usize::from(display.max_concurrent_prompts) {
                break (participant_id, agent.user_id.clone());
            }
            let frees_in = earliest.map(|t| (t - now).to_std().unwrap_or_default()).unwrap_or_default();
            let retry_after_ms = frees_in.as_millis() as u64;
            let reject = matches!(payload.on_capacity(), crate::contract::OnCapacity::Reject);
            if reject || Instant::now() + frees_in > queue_deadline {
                return Err(DirectError::Capacity { shown, max: display.max_concurrent_prompts, retry_after_ms });
            }
            // Queue: sleep until the earliest prompt auto-dismisses, then look again (the
            // agent may have dismissed others, or another writer may have taken the slot).
            tracing::info!(retry_after_ms, "no free prompt slot; waiting for one");
            let nap = frees_in + Duration::from_millis(10);
            tokio::time::sleep(nap).await;
            waited += nap;
        };

        let resolve_time = started.elapsed().saturating_sub(waited);
        if self.options.honour_delay {
            tokio::time::sleep(Duration::from_millis(display.delay_ms)).await;
        }
        let write_started = Instant::now();
        let shown_at = Utc::now();
        let prompt = PromptAttribute::shown(payload.prompt_id(), content, shown_at, display.auto_dismiss_ms);
        let attributes = participant_data::show_attributes(prefix, injection_id, &prompt);
        self.client.patch_participant_attributes(&conversation_id, &participant_id, &attributes).await?;
        let latency = resolve_time + write_started.elapsed();
        Ok(Delivered {
            injection_id,
            conversation_id,
            participant_id,
            agent_user_id,
            accepted_at,
            latency_ms: latency.as_millis() as u64,
            prompt,
            attributes,
            queued_ms: waited.as_millis() as u64,
        })
    }

    /// Mark a delivered prompt with a final status (`expired`, `dismissed`, …).
    pub async fn mark(&self, delivered: &Delivered, status: &str) -> Result<(), DirectError> {
        let attrs = participant_data::mark_attributes(
            &self.options.attribute_prefix,
            delivered.injection_id,
            &delivered.prompt,
            status,
        );
        self.client.patch_participant_attributes(&delivered.conversation_id, &delivered.participant_id, &attrs).await?;
        Ok(())
    }
}

/// The audit draft of one state change of a directly injected prompt.
pub fn audit_draft(
    payload: &ValidPayload,
    injection_id: Uuid,
    status: &str,
    latency_ms: Option<u64>,
    error: Option<String>,
    actor: &str,
) -> AuditDraft {
    AuditDraft {
        conversation_id: payload.conversation_id(),
        prompt_id: payload.prompt_id(),
        injection_id,
        status: status.to_string(),
        latency_ms,
        error,
        actor: actor.to_string(),
        reason: None,
    }
}
