"""The Python `kubernetes` client against a Corral API server (its kubeconfig in argv[1]: HTTPS,
the rack's CA, a client certificate).

Exercises what the client does differently from kubectl and kube-rs: it sends core objects
without apiVersion/kind, always sends merge patches from CustomObjectsApi, and asks for
watches with `watch=True&allowWatchBookmarks=True` (Go-style booleans).
"""
import sys
import threading
import time

from kubernetes import client, config, watch

G, V = "test.corral.dev", "v1"

configuration = client.Configuration()
config.load_kube_config(config_file=sys.argv[1], client_configuration=configuration)
assert configuration.host.startswith("https://"), configuration.host
api = client.ApiClient(configuration)
custom = client.CustomObjectsApi(api)
core = client.CoreV1Api(api)

core.create_namespace({"metadata": {"name": "py"}})
names = [n.metadata.name for n in core.list_namespace().items]
assert "py" in names and "default" in names, names

widget = {"apiVersion": f"{G}/{V}", "kind": "Widget", "metadata": {"name": "p1"}, "spec": {"color": "red"}}
created = custom.create_namespaced_custom_object(G, V, "py", "widgets", widget)
assert created["spec"]["size"] == 10, created  # schema default

events = []


def follow():
    stream = watch.Watch().stream(
        custom.list_namespaced_custom_object, G, V, "py", "widgets",
        timeout_seconds=5, allow_watch_bookmarks=True,
    )
    for event in stream:
        events.append((event["type"], event["object"]["metadata"]["name"]))
        if event["type"] == "DELETED":
            return


watcher = threading.Thread(target=follow)
watcher.start()
time.sleep(0.5)
custom.patch_namespaced_custom_object(G, V, "py", "widgets", "p1", {"spec": {"color": "blue"}})
status = custom.patch_namespaced_custom_object_status(G, V, "py", "widgets", "p1", {"status": {"phase": "Done"}})
assert status["status"]["phase"] == "Done" and status["metadata"]["generation"] == 2, status
custom.delete_namespaced_custom_object(G, V, "py", "widgets", "p1")
watcher.join(10)
assert events == [("ADDED", "p1"), ("MODIFIED", "p1"), ("MODIFIED", "p1"), ("DELETED", "p1")], events

try:
    bad = dict(widget, metadata={"name": "bad"}, spec={"color": "purple"})
    custom.create_namespaced_custom_object(G, V, "py", "widgets", bad)
    raise AssertionError("an invalid widget was accepted")
except client.exceptions.ApiException as error:
    assert error.status == 422, error

core.create_namespaced_event("py", {
    "metadata": {"name": "e1"},
    "involvedObject": {"kind": "Widget", "name": "p1", "namespace": "py"},
    "reason": "Tested", "message": "from python", "type": "Normal",
})
reasons = [(e.reason, e.message) for e in core.list_namespaced_event("py").items]
assert reasons == [("Tested", "from python")], reasons
print("python client: ok", events)
