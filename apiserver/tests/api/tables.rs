//! Tables (§6, §7): printer columns in lists, single objects and watches.

use serde_json::{Value, json};

use crate::support::*;

#[tokio::test]
async fn tables_render_printer_columns() {
    let h = Harness::start().await;
    h.create_widget("a", json!({"color": "red", "note": "hi"}))
        .await;
    h.create_widget("b", json!({"color": "blue", "size": 3}))
        .await;
    h.patch_status(
        &widget_path("a"),
        json!({"conditions": [{"type": "Ready", "status": "True"}]}),
    )
    .await;

    let table = h.get_table(WIDGETS).await.expect(200);
    assert_eq!(table["kind"], "Table");
    assert_eq!(table["apiVersion"], "meta.k8s.io/v1");
    assert!(!rv(&table).is_empty());
    let columns = table["columnDefinitions"].as_array().expect("columns");
    let column_names: Vec<&str> = columns
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        column_names,
        ["Name", "Color", "Size", "Ready", "Age", "Note"]
    );
    assert_eq!(columns[0]["format"], "name");
    assert_eq!(columns[2]["type"], "integer");
    assert_eq!(columns[4]["type"], "date");
    assert_eq!(columns[5]["priority"], 1);
    assert_eq!(columns[1]["priority"], 0);
    let rows = table["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 2);
    let cells = &rows[0]["cells"];
    assert_eq!(cells[0], "a");
    assert_eq!(cells[1], "red");
    assert_eq!(cells[2], 10, "integer cells are JSON numbers");
    assert_eq!(cells[3], "True");
    let age = cells[4].as_str().expect("date cells are ages");
    assert!(
        age.len() >= 2 && age.ends_with('s') && age[..age.len() - 1].parse::<u32>().is_ok(),
        "age {age:?}"
    );
    assert_eq!(cells[5], "hi");
    assert_eq!(rows[1]["cells"][3], Value::Null, "a missing value is null");
    assert_eq!(rows[1]["cells"][5], Value::Null);
    // includeObject: Metadata by default, then None and Object.
    assert_eq!(rows[0]["object"]["kind"], "PartialObjectMetadata");
    assert_eq!(rows[0]["object"]["apiVersion"], "meta.k8s.io/v1");
    assert_eq!(rows[0]["object"]["metadata"]["namespace"], "default");
    assert!(rows[0]["object"].get("spec").is_none());
    let none = h
        .get_table(&format!("{WIDGETS}?includeObject=None"))
        .await
        .expect(200);
    assert_eq!(none["rows"][0]["object"], Value::Null);
    let full = h
        .get_table(&format!("{WIDGETS}?includeObject=Object"))
        .await
        .expect(200);
    assert_eq!(full["rows"][0]["object"]["kind"], "Widget");
    assert_eq!(full["rows"][0]["object"]["spec"]["color"], "red");
    let meta = h
        .get_table(&format!("{WIDGETS}?includeObject=Metadata"))
        .await
        .expect(200);
    assert_eq!(meta["rows"][0]["object"]["kind"], "PartialObjectMetadata");

    // Pages of a Table carry the continue token; one object is a one-row Table.
    let page = h.get_table(&format!("{WIDGETS}?limit=1")).await.expect(200);
    assert_eq!(page["rows"].as_array().unwrap().len(), 1);
    assert!(page["metadata"]["continue"].is_string());
    let one = h.get_table(&widget_path("b")).await.expect(200);
    assert_eq!(one["kind"], "Table");
    assert_eq!(one["rows"][0]["cells"][0], "b");
    assert_eq!(one["rows"][0]["cells"][2], 3);
    assert!(!rv(&one).is_empty());
}

#[tokio::test]
async fn tables_without_printer_columns_get_an_age_column() {
    let h = Harness::start().await;
    h.create(GADGETS, gadget("g", json!({}))).await;
    let table = h.get_table(GADGETS).await.expect(200);
    let columns: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["Name", "Age"]);
    assert_eq!(table["columnDefinitions"][1]["type"], "date");
    assert_eq!(table["rows"][0]["cells"][0], "g");
    assert!(
        table["rows"][0]["cells"][1]
            .as_str()
            .unwrap()
            .ends_with('s')
    );
}

#[tokio::test]
async fn table_watches_send_column_definitions_only_first() {
    let h = Harness::start().await;
    h.create_widget("a", json!({"color": "red"})).await;
    h.create_widget("b", json!({"color": "blue"})).await;
    let mut watch = h
        .watch_with(
            &format!("{WIDGETS}?watch=true"),
            &[("accept", TABLE_ACCEPT)],
        )
        .await;
    let first = watch.next().await;
    assert_eq!(first["type"], "ADDED");
    assert_eq!(first["object"]["kind"], "Table");
    assert_eq!(
        first["object"]["columnDefinitions"]
            .as_array()
            .unwrap()
            .len(),
        6
    );
    assert_eq!(first["object"]["rows"][0]["cells"][0], "a");
    let no_columns = |event: &Value| {
        event["object"]["columnDefinitions"]
            .as_array()
            .is_none_or(|c| c.is_empty())
    };
    let second = watch.next().await;
    assert_eq!(second["object"]["rows"][0]["cells"][0], "b");
    assert!(no_columns(&second), "{second}");
    let changed = h
        .merge_patch(&widget_path("a"), &json!({"spec": {"size": 7}}))
        .await
        .expect(200);
    let third = watch.next().await;
    assert_eq!(third["type"], "MODIFIED");
    assert!(no_columns(&third), "{third}");
    assert_eq!(third["object"]["rows"][0]["cells"][2], 7);
    assert_eq!(rv(&third["object"]), rv(&changed));
}
