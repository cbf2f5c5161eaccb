//! Admission: every client write passes the server's rules, in order, with the object it would
//! store; a refusal is the reply and stores nothing.

use std::sync::{Arc, Mutex};

use corral_apiserver::error::{ApiError, ApiResult, Cause};
use corral_apiserver::{Admission, AdmissionRequest, AdmissionRule, Config, Subresource, Verb};
use serde_json::{Value, json};

use crate::support::*;

/// What a rule saw of one write.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    plural: String,
    subresource: Option<Subresource>,
    verb: Verb,
    had_old: bool,
    new: Value,
}

/// Records every write it sees; refuses a widget whose `spec.note` is `refuse`, and every widget
/// write while a gadget named `stop` exists.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<Seen>>,
}

impl Recorder {
    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

fn refusal(request: &AdmissionRequest<'_>, field: &str) -> ApiError {
    let mut error = ApiError::conflict(&request.target(), "refused by the test rule");
    error.causes = vec![Cause {
        kind: "FieldValueInvalid".into(),
        message: "refused".into(),
        field: field.into(),
    }];
    error
}

#[async_trait::async_trait]
impl AdmissionRule for Recorder {
    fn name(&self) -> &'static str {
        "Recorder"
    }

    async fn admit(&self, request: &AdmissionRequest<'_>) -> ApiResult<()> {
        self.seen.lock().unwrap().push(Seen {
            plural: request.resource.plural.clone(),
            subresource: request.subresource,
            verb: request.verb,
            had_old: request.old.is_some(),
            new: request.new.clone(),
        });
        if request.resource.plural != "widgets" {
            return Ok(());
        }
        if request.new.pointer("/spec/note") == Some(&json!("refuse")) {
            return Err(refusal(request, "spec.note"));
        }
        let stop = request
            .objects
            .read_object(GROUP, "gadgets", None, "stop")
            .await?;
        if stop.is_some() {
            return Err(refusal(request, "metadata.name"));
        }
        Ok(())
    }
}

/// A server whose only rule is a fresh recorder.
async fn start_recording() -> (Harness, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let config = Config {
        admission: Admission::none().with(recorder.clone()),
        ..test_config()
    };
    (Harness::start_with(config).await, recorder)
}

/// The one write the recorder saw since it was last asked.
#[track_caller]
fn only(seen: Vec<Seen>) -> Seen {
    assert_eq!(seen.len(), 1, "{seen:#?}");
    seen.into_iter().next().unwrap()
}

#[tokio::test]
async fn every_client_write_is_admitted_with_its_verb_and_the_object_it_would_store() {
    let (h, recorder) = start_recording().await;
    let a = widget_path("a");

    let created = h.create_widget("a", json!({"color": "red"})).await;
    let seen = only(recorder.take());
    assert_eq!(
        (
            seen.plural.as_str(),
            seen.subresource,
            seen.verb,
            seen.had_old
        ),
        ("widgets", None, Verb::Create, false)
    );
    assert_eq!(seen.new["spec"]["size"], 10, "defaults are applied first");
    assert_eq!(seen.new["metadata"]["uid"], created["metadata"]["uid"]);
    assert!(
        seen.new["metadata"]["managedFields"].is_array(),
        "managedFields are recorded first: {}",
        seen.new
    );

    let mut body = created.clone();
    body["spec"]["size"] = json!(20);
    h.put(&a, &body).await.expect(200);
    let seen = only(recorder.take());
    assert_eq!((seen.verb, seen.had_old), (Verb::Update, true));
    assert_eq!(seen.new["spec"]["size"], 20);

    h.merge_patch(&a, &json!({"spec": {"size": 21}}))
        .await
        .expect(200);
    assert_eq!(only(recorder.take()).verb, Verb::Patch);
    h.json_patch(
        &a,
        &json!([{"op": "replace", "path": "/spec/size", "value": 22}]),
    )
    .await
    .expect(200);
    assert_eq!(only(recorder.take()).verb, Verb::Patch);

    h.apply_widget("fieldManager=alpha", "a", json!({"color": "red"}))
        .await
        .expect(200);
    let seen = only(recorder.take());
    assert_eq!((seen.verb, seen.had_old), (Verb::Apply, true));
    h.apply_widget("fieldManager=alpha", "b", json!({"color": "blue"}))
        .await
        .expect(201);
    let seen = only(recorder.take());
    assert_eq!((seen.verb, seen.had_old), (Verb::Apply, false));

    h.patch_status(&a, json!({"phase": "Running"})).await;
    let seen = only(recorder.take());
    assert_eq!(
        (seen.subresource, seen.verb),
        (Some(Subresource::Status), Verb::Patch)
    );
    assert_eq!(seen.new["status"]["phase"], "Running");

    // A write that changes nothing is admitted like any other.
    let current = h.get(&a).await.expect(200);
    h.put(&a, &current).await.expect(200);
    let seen = only(recorder.take());
    assert_eq!(seen.new["spec"], current["spec"]);

    // Deletes are not admission's.
    h.delete(&a, None).await.expect(200);
    assert!(recorder.take().is_empty());
}

#[tokio::test]
async fn a_refused_write_is_the_reply_and_changes_nothing() {
    let (h, _recorder) = start_recording().await;
    let a = widget_path("a");
    let before = h.create_widget("a", json!({"color": "red"})).await;

    let refused = |status: Value| {
        assert_eq!(cause_fields(&status), ["spec.note"], "{status}");
        assert!(
            message(&status).contains("refused by the test rule"),
            "{status}"
        );
    };
    let mut body = before.clone();
    body["spec"]["note"] = json!("refuse");
    refused(h.put(&a, &body).await.expect_error(409, "Conflict"));
    refused(
        h.merge_patch(&a, &json!({"spec": {"note": "refuse"}}))
            .await
            .expect_error(409, "Conflict"),
    );
    refused(
        h.json_patch(
            &a,
            &json!([{"op": "add", "path": "/spec/note", "value": "refuse"}]),
        )
        .await
        .expect_error(409, "Conflict"),
    );
    refused(
        h.apply_widget(
            "fieldManager=alpha",
            "a",
            json!({"color": "red", "note": "refuse"}),
        )
        .await
        .expect_error(409, "Conflict"),
    );
    refused(
        h.merge_patch(
            &format!("{a}?dryRun=All"),
            &json!({"spec": {"note": "refuse"}}),
        )
        .await
        .expect_error(409, "Conflict"),
    );
    let after = h.get(&a).await.expect(200);
    assert_eq!(after, before, "a refused write changed the object");

    refused(
        h.post(
            WIDGETS,
            &widget("b", json!({"color": "red", "note": "refuse"})),
        )
        .await
        .expect_error(409, "Conflict"),
    );
    refused(
        h.apply_widget(
            "fieldManager=alpha",
            "c",
            json!({"color": "red", "note": "refuse"}),
        )
        .await
        .expect_error(409, "Conflict"),
    );
    assert!(h.is_gone(&widget_path("b")).await);
    assert!(h.is_gone(&widget_path("c")).await);
}

#[tokio::test]
async fn a_rule_reads_other_objects_as_a_get_does() {
    let (h, recorder) = start_recording().await;
    let a = widget_path("a");
    h.create_widget("a", json!({"color": "red"})).await;

    h.create(GADGETS, gadget("stop", json!({}))).await;
    let status = h
        .merge_patch(&a, &json!({"spec": {"size": 30}}))
        .await
        .expect_error(409, "Conflict");
    assert_eq!(cause_fields(&status), ["metadata.name"]);
    assert_eq!(h.get(&a).await.expect(200)["spec"]["size"], 10);

    h.delete(&gadget_path("stop"), None).await.expect(200);
    h.merge_patch(&a, &json!({"spec": {"size": 30}}))
        .await
        .expect(200);
    assert_eq!(h.get(&a).await.expect(200)["spec"]["size"], 30);
    recorder.take();
}

#[tokio::test]
async fn without_rules_every_write_is_admitted() {
    let config = Config {
        admission: Admission::none(),
        ..test_config()
    };
    assert!(config.admission.is_empty());
    let h = Harness::start_with(config).await;
    h.create_widget("a", json!({"color": "red", "note": "refuse"}))
        .await;
    h.patch_status(&widget_path("a"), json!({"phase": "Running"}))
        .await;
}
