//! Discovery and OpenAPI (§1-3): version, API groups and resources, the OpenAPI v3 document.

use axum::http::Method;
use serde_json::{Value, json};

use crate::support::*;

#[tokio::test]
async fn version_reports_minor_32() {
    let h = Harness::start().await;
    let version = h.get("/version?timeout=5s").await.expect(200);
    assert_eq!(version["major"], "1");
    assert_eq!(version["minor"], "32");
    assert!(
        version["gitVersion"]
            .as_str()
            .unwrap()
            .starts_with("v1.32.")
    );
}

#[tokio::test]
async fn discovery_describes_groups_versions_and_resources() {
    let h = Harness::start().await;
    let api = h.get("/api").await.expect(200);
    assert_eq!(api["kind"], "APIVersions");
    assert_eq!(api["versions"], json!(["v1"]));
    let core = h.get("/api/v1").await.expect(200);
    assert_eq!(core["kind"], "APIResourceList");
    assert_eq!(core["groupVersion"], "v1");
    assert!(
        core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "namespaces" && r["namespaced"] == false),
        "{core}"
    );

    let apis = h.get("/apis").await.expect(200);
    assert_eq!(apis["kind"], "APIGroupList");
    assert_eq!(apis["apiVersion"], "v1");
    let group = apis["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == GROUP)
        .expect("the test group")
        .clone();
    let gv = json!({"groupVersion": API_VERSION, "version": "v1"});
    assert_eq!(group["versions"], json!([gv]));
    assert_eq!(group["preferredVersion"], gv);
    let group_doc = h.get(&format!("/apis/{GROUP}")).await.expect(200);
    assert_eq!(group_doc["kind"], "APIGroup");

    let list = h.get(&format!("/apis/{API_VERSION}")).await.expect(200);
    assert_eq!(list["kind"], "APIResourceList");
    assert_eq!(list["apiVersion"], "v1");
    assert_eq!(list["groupVersion"], API_VERSION);
    let resources = list["resources"].as_array().unwrap();
    let find = |name: &str| {
        resources
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {list}"))
            .clone()
    };
    let widgets = find("widgets");
    assert_eq!(widgets["singularName"], "widget");
    assert_eq!(widgets["namespaced"], true);
    assert_eq!(widgets["kind"], "Widget");
    assert_eq!(widgets["shortNames"], json!(["wg"]));
    assert_eq!(widgets["categories"], json!(["all"]));
    assert_eq!(
        widgets["verbs"],
        json!([
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch"
        ])
    );
    let status = find("widgets/status");
    assert_eq!(status["kind"], "Widget");
    assert_eq!(status["singularName"], "");
    assert_eq!(status["namespaced"], true);
    assert_eq!(status["verbs"], json!(["get", "patch", "update"]));
    let gadgets = find("gadgets");
    assert_eq!(gadgets["namespaced"], false);
    assert!(!resources.iter().any(|r| r["name"] == "gadgets/status"));

    h.get("/apis/nope.example.com/v1")
        .await
        .expect_error(404, "NotFound");
    h.get(&format!("/apis/{GROUP}/v9"))
        .await
        .expect_error(404, "NotFound");
}

#[tokio::test]
async fn openapi_v3_lets_kubectl_validate_on_the_server() {
    let h = Harness::start().await;
    let index = h.get("/openapi/v3").await.expect(200);
    let url = index["paths"][format!("apis/{API_VERSION}")]["serverRelativeURL"]
        .as_str()
        .expect("the group version is indexed")
        .to_string();
    let prefix = format!("/openapi/v3/apis/{API_VERSION}?hash=");
    assert!(
        url.starts_with(&prefix) && url.len() > prefix.len(),
        "{url}"
    );
    let document = h.get(&url).await.expect(200);
    assert_eq!(
        document,
        h.get(&format!("/openapi/v3/apis/{API_VERSION}"))
            .await
            .expect(200)
    );
    assert!(
        !document.to_string().contains("strategic-merge-patch"),
        "strategic merge patch must never be offered"
    );
    let object_paths = [
        (
            format!("/apis/{API_VERSION}/namespaces/{{namespace}}/widgets/{{name}}"),
            "Widget",
        ),
        (
            format!("/apis/{API_VERSION}/namespaces/{{namespace}}/widgets/{{name}}/status"),
            "Widget",
        ),
        (format!("/apis/{API_VERSION}/gadgets/{{name}}"), "Gadget"),
    ];
    for (path, kind) in object_paths {
        let patch = &document["paths"][&path]["patch"];
        assert!(patch.is_object(), "no PATCH at {path}");
        assert_eq!(
            patch["x-kubernetes-group-version-kind"],
            json!({"group": GROUP, "version": "v1", "kind": kind})
        );
        assert!(
            patch["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation" && p["in"] == "query"),
            "{path}: fieldValidation parameter"
        );
        let mut types: Vec<&str> = patch["requestBody"]["content"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        types.sort();
        assert_eq!(
            types,
            [
                "application/apply-patch+yaml",
                "application/json-patch+json",
                "application/merge-patch+json"
            ],
            "{path}"
        );
    }
    let schemas = document["components"]["schemas"].as_object().unwrap();
    let widget_schema = schemas
        .values()
        .find(|s| {
            s["x-kubernetes-group-version-kind"]
                == json!([{"group": GROUP, "version": "v1", "kind": "Widget"}])
        })
        .expect("a schema tagged with Widget's GVK");
    assert_eq!(
        widget_schema["properties"]["spec"]["properties"]["color"]["enum"],
        json!(["red", "green", "blue"])
    );

    // The hash is stable for one schema and changes with it.
    let hash_of = |index: &Value| {
        index["paths"][format!("apis/{API_VERSION}")]["serverRelativeURL"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let same = Harness::start().await;
    assert_eq!(hash_of(&same.get("/openapi/v3").await.expect(200)), url);
    let changed_dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(fixture_crds().join("test.corral.dev.yaml")).unwrap();
    let changed_text = text.replace("maxLength: 16", "maxLength: 17");
    assert_ne!(changed_text, text);
    std::fs::write(changed_dir.path().join("crds.yaml"), changed_text).unwrap();
    let changed = Harness::start_with_crds(changed_dir.path(), test_config()).await;
    assert_ne!(hash_of(&changed.get("/openapi/v3").await.expect(200)), url);

    h.get("/openapi/v3/apis/nope.example.com/v1")
        .await
        .expect_error(404, "NotFound");
    h.call(
        Method::GET,
        "/openapi/v2",
        &[(
            "accept",
            "application/com.github.proto-openapi.spec.v2@v1.0+protobuf",
        )],
        Vec::new(),
    )
    .await
    .expect_error(404, "NotFound");
}
