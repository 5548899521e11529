//! The client against the in-process fake runtime: registration, Configure, split
//! Synchronize, large messages over several frames, events, timeouts, unknown methods, and
//! reconnecting after the runtime restarts.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_nri::api::{PLUGIN_SERVICE, StateChangeEvent};
use berth_nri::fake::{FakeOptions, FakeRuntime, PluginHandle};
use berth_nri::{
    Container, ContainerAdjustment, CreateContainerResponse, Error, Event, EventMask, HandlerError,
    HandlerResult, KeyValue, Mount, Options, PodSandbox, Runner, State,
};
use prost::Message;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<String>>,
    synced: Mutex<Vec<(usize, usize)>>,
    create_delay: Mutex<Duration>,
}

impl berth_nri::Plugin for Recorder {
    fn events(&self) -> EventMask {
        EventMask::of(&[
            Event::CreateContainer,
            Event::StopContainer,
            Event::RemoveContainer,
            Event::RemovePodSandbox,
        ])
    }

    async fn synchronize(
        &self,
        pods: Vec<PodSandbox>,
        containers: Vec<Container>,
    ) -> HandlerResult<Vec<berth_nri::ContainerUpdate>> {
        self.synced
            .lock()
            .unwrap()
            .push((pods.len(), containers.len()));
        Ok(Vec::new())
    }

    async fn create_container(
        &self,
        pod: PodSandbox,
        ctr: Container,
    ) -> HandlerResult<CreateContainerResponse> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("create {}/{}", pod.name, ctr.name));
        let delay = *self.create_delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        if ctr.name == "refuse-me" {
            return Err(HandlerError::new("refused by the test plugin"));
        }
        // Echo every env entry back, uppercased, to make the answer as large as the request.
        let env = ctr
            .env
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| KeyValue {
                key: k.to_string(),
                value: v.to_uppercase(),
            })
            .collect();
        Ok(CreateContainerResponse {
            adjust: Some(ContainerAdjustment {
                mounts: vec![Mount {
                    destination: "/app/logs".into(),
                    r#type: "bind".into(),
                    source: format!("/logs/{}", ctr.name),
                    options: vec!["rbind".into(), "rw".into()],
                }],
                env,
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    async fn event(
        &self,
        event: Event,
        pod: PodSandbox,
        ctr: Option<Container>,
    ) -> HandlerResult<()> {
        let c = ctr.map(|c| c.name).unwrap_or_else(|| "-".into());
        self.calls
            .lock()
            .unwrap()
            .push(format!("{event:?} {}/{c}", pod.name));
        Ok(())
    }

    async fn shutdown(&self) {
        self.calls.lock().unwrap().push("shutdown".into());
    }
}

struct Bed {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    stop: CancellationToken,
    plugin: Arc<Recorder>,
    state: tokio::sync::watch::Receiver<State>,
}

impl Drop for Bed {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn options(socket: &std::path::Path) -> Options {
    let mut o = Options::new(socket, "recorder", "42");
    o.backoff_initial = Duration::from_millis(20);
    o.backoff_max = Duration::from_millis(200);
    o.registration_timeout = Duration::from_millis(500);
    o
}

fn start_plugin(opts_fn: impl FnOnce(&mut Options)) -> Bed {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nri.sock");
    let plugin = Arc::new(Recorder::default());
    let mut opts = options(&socket);
    opts_fn(&mut opts);
    let runner = Runner::new(opts, plugin.clone()).unwrap();
    let state = runner.state();
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move { runner.run(s).await });
    Bed {
        _dir: dir,
        socket,
        stop,
        plugin,
        state,
    }
}

async fn connect(rt: &mut FakeRuntime) -> PluginHandle {
    rt.next_plugin(WAIT)
        .await
        .expect("plugin did not register in time")
        .expect("admission failed")
}

fn pod(name: &str) -> PodSandbox {
    PodSandbox {
        id: format!("sb-{name}"),
        name: name.into(),
        namespace: "default".into(),
        uid: "u1".into(),
        ..Default::default()
    }
}

fn ctr(name: &str, env: Vec<String>) -> Container {
    Container {
        id: format!("c-{name}"),
        name: name.into(),
        pod_sandbox_id: "sb".into(),
        env,
        ..Default::default()
    }
}

async fn wait_state(
    state: &mut tokio::sync::watch::Receiver<State>,
    want: impl Fn(&State) -> bool,
) -> State {
    tokio::time::timeout(WAIT, state.wait_for(|s| want(s)))
        .await
        .expect("state not reached in time")
        .unwrap()
        .clone()
}

#[tokio::test]
async fn registers_configures_and_subscribes_only_to_its_events() {
    let bed = start_plugin(|_| {});
    let mut rt = FakeRuntime::start(
        &bed.socket,
        FakeOptions {
            runtime_version: "2.1.9".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let h = connect(&mut rt).await;
    assert_eq!(h.registration.plugin_name, "recorder");
    assert_eq!(h.registration.plugin_idx, "42");
    assert_eq!(
        h.events.wire(),
        (1 << 3) | (1 << 9) | (1 << 10) | (1 << 2),
        "create, stop, remove ctr, remove pod"
    );
    assert!(!h.events.contains(Event::StartContainer));
    let mut state = bed.state.clone();
    let s = wait_state(&mut state, |s| matches!(s, State::Ready { .. })).await;
    assert_eq!(
        s,
        State::Ready {
            runtime: "fake-runtime".into(),
            version: "2.1.9".into(),
            connection: 1
        }
    );
    rt.stop();
}

#[tokio::test]
async fn split_synchronize_is_joined_before_the_handler_sees_it() {
    let bed = start_plugin(|_| {});
    let pods: Vec<_> = (0..5).map(|i| pod(&format!("p{i}"))).collect();
    let ctrs: Vec<_> = (0..7).map(|i| ctr(&format!("c{i}"), vec![])).collect();
    let mut rt = FakeRuntime::start(
        &bed.socket,
        FakeOptions {
            pods,
            containers: ctrs,
            sync_chunk: 2,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let h = connect(&mut rt).await;
    // 7 containers in chunks of 2: four messages, the first three with more=true.
    let mores: Vec<bool> = h.sync_replies.iter().map(|r| r.more).collect();
    assert_eq!(mores, vec![true, true, true, false]);
    assert_eq!(
        *bed.plugin.synced.lock().unwrap(),
        vec![(5, 7)],
        "handler called once with everything"
    );
    rt.stop();
}

#[tokio::test]
async fn create_container_with_messages_larger_than_a_frame_both_ways() {
    let bed = start_plugin(|_| {});
    // The fake sends 1000-byte frames; the plugin must reassemble and answer in ≤ 4096 frames.
    let mut rt = FakeRuntime::start(
        &bed.socket,
        FakeOptions {
            max_frame: 1000,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let h = connect(&mut rt).await;
    let env: Vec<String> = (0..400)
        .map(|i| format!("VAR_{i}=value-number-{i}-padding-padding"))
        .collect();
    let req_size = ctr("big", env.clone()).encoded_len();
    assert!(
        req_size > 3 * 4096,
        "request must span several frames, is {req_size}"
    );
    let resp = h
        .create_container(&pod("web"), &ctr("big", env))
        .await
        .unwrap();
    let adjust = resp.adjust.expect("adjustment");
    assert_eq!(adjust.mounts.len(), 1);
    assert_eq!(adjust.mounts[0].source, "/logs/big");
    assert_eq!(adjust.env.len(), 400);
    assert_eq!(
        adjust.env[399],
        KeyValue {
            key: "VAR_399".into(),
            value: "VALUE-NUMBER-399-PADDING-PADDING".into()
        }
    );
    let largest = h.largest_frame_from_plugin();
    assert!(
        largest <= 4096 && largest > 1000,
        "plugin frames must be split at 4096 bytes, largest was {largest}"
    );
    rt.stop();
}

#[tokio::test]
async fn tiny_frames_that_split_headers_are_reassembled() {
    let bed = start_plugin(|_| {});
    let mut rt = FakeRuntime::start(
        &bed.socket,
        FakeOptions {
            max_frame: 3,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let h = connect(&mut rt).await;
    let resp = h
        .create_container(&pod("web"), &ctr("tiny", vec!["A=b".into()]))
        .await
        .unwrap();
    assert_eq!(
        resp.adjust.unwrap().env,
        vec![KeyValue {
            key: "A".into(),
            value: "B".into()
        }]
    );
    rt.stop();
}

#[tokio::test]
async fn events_arrive_through_state_change_and_dedicated_rpcs() {
    let bed = start_plugin(|_| {});
    let mut rt = FakeRuntime::start(&bed.socket, FakeOptions::default())
        .await
        .unwrap();
    let h = connect(&mut rt).await;
    let (p, c) = (pod("web"), ctr("app", vec![]));
    h.state_change(Event::RemoveContainer, &p, Some(&c))
        .await
        .unwrap();
    h.event_rpc(Event::RemoveContainer, &p, Some(&c))
        .await
        .unwrap();
    h.event_rpc(Event::RemovePodSandbox, &p, None)
        .await
        .unwrap();
    // Not subscribed: answered OK, handler not called.
    h.state_change(Event::StartContainer, &p, Some(&c))
        .await
        .unwrap();
    h.event_rpc(Event::PostStartContainer, &p, Some(&c))
        .await
        .unwrap();
    // An event number newer than this crate: acknowledged.
    let raw = StateChangeEvent {
        event: 99,
        pod: Some(p.clone()),
        container: None,
    }
    .encode_to_vec();
    h.call_raw(PLUGIN_SERVICE, "StateChange", raw, WAIT)
        .await
        .unwrap();
    h.stop_container(&p, &c).await.unwrap();
    h.update_container(&p, &c).await.unwrap();
    h.shutdown().await.unwrap();
    assert_eq!(
        *bed.plugin.calls.lock().unwrap(),
        vec![
            "RemoveContainer web/app",
            "RemoveContainer web/app",
            "RemovePodSandbox web/-",
            "shutdown"
        ]
    );
    rt.stop();
}

#[tokio::test]
async fn handler_error_refuses_the_container_with_its_message() {
    let bed = start_plugin(|_| {});
    let mut rt = FakeRuntime::start(&bed.socket, FakeOptions::default())
        .await
        .unwrap();
    let h = connect(&mut rt).await;
    let err = h
        .create_container(&pod("web"), &ctr("refuse-me", vec![]))
        .await
        .unwrap_err();
    match err {
        Error::Status {
            code,
            message,
            method,
        } => {
            assert_eq!(code, 2, "unknown");
            assert_eq!(message, "refused by the test plugin");
            assert_eq!(method, "CreateContainer");
        }
        e => panic!("expected a status error, got {e:?}"),
    }
    rt.stop();
}

#[tokio::test]
async fn unknown_methods_and_services_get_unimplemented() {
    let bed = start_plugin(|_| {});
    let mut rt = FakeRuntime::start(&bed.socket, FakeOptions::default())
        .await
        .unwrap();
    let h = connect(&mut rt).await;
    let e = h
        .call_raw(PLUGIN_SERVICE, "FrobnicateContainer", vec![], WAIT)
        .await
        .unwrap_err();
    assert_eq!(e.status_code(), Some(12), "{e:?}");
    let e = h
        .call_raw("nri.pkg.api.v1alpha1.HostFunctions", "Log", vec![], WAIT)
        .await
        .unwrap_err();
    assert_eq!(e.status_code(), Some(12), "{e:?}");
    // A garbage payload for a known method is InvalidArgument, and the connection survives it.
    let e = h
        .call_raw(
            PLUGIN_SERVICE,
            "CreateContainer",
            vec![0xff, 0xff, 0xff],
            WAIT,
        )
        .await
        .unwrap_err();
    assert_eq!(e.status_code(), Some(3), "{e:?}");
    h.create_container(&pod("web"), &ctr("after", vec![]))
        .await
        .unwrap();
    rt.stop();
}

#[tokio::test]
async fn slow_handler_times_out_at_the_runtime_and_the_connection_survives() {
    let bed = start_plugin(|_| {});
    let mut rt = FakeRuntime::start(
        &bed.socket,
        FakeOptions {
            request_timeout: Duration::from_millis(150),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let h = connect(&mut rt).await;
    *bed.plugin.create_delay.lock().unwrap() = Duration::from_millis(600);
    let started = std::time::Instant::now();
    let e = h
        .create_container(&pod("web"), &ctr("slow", vec![]))
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Timeout { ref method, .. } if method == "CreateContainer"),
        "{e:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(550),
        "timeout took {:?}",
        started.elapsed()
    );
    *bed.plugin.create_delay.lock().unwrap() = Duration::ZERO;
    // The late answer to the first call arrives and is dropped; the next call still works.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let r = h
        .create_container(&pod("web"), &ctr("fast", vec![]))
        .await
        .unwrap();
    assert_eq!(r.adjust.unwrap().mounts[0].source, "/logs/fast");
    assert!(!h.is_closed());
    rt.stop();
}

#[tokio::test]
async fn unanswered_registration_times_out_and_the_plugin_retries() {
    let bed = start_plugin(|o| o.registration_timeout = Duration::from_millis(200));
    let mut rt = FakeRuntime::start(
        &bed.socket,
        FakeOptions {
            answer_register: false,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // First attempt: registered but never answered.
    let first = rt.next_plugin(WAIT).await.expect("first attempt");
    assert!(first.is_err());
    // The plugin gives up after 200 ms and tries again on a new connection.
    let second = rt
        .next_plugin(WAIT)
        .await
        .expect("plugin retried after its registration timeout");
    assert!(second.is_err());
    assert_eq!(*bed.state.borrow(), State::Disconnected);
    rt.stop();
}

#[tokio::test]
async fn reconnects_and_reregisters_after_the_runtime_restarts() {
    let bed = start_plugin(|_| {});
    let mut rt = FakeRuntime::start(&bed.socket, FakeOptions::default())
        .await
        .unwrap();
    let h = connect(&mut rt).await;
    h.create_container(&pod("web"), &ctr("one", vec![]))
        .await
        .unwrap();
    let mut state = bed.state.clone();
    wait_state(&mut state, |s| {
        matches!(s, State::Ready { connection: 1, .. })
    })
    .await;

    rt.stop();
    wait_state(&mut state, |s| *s == State::Disconnected).await;
    // The runtime is down for a while: the plugin keeps retrying with backoff.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut rt = FakeRuntime::start(
        &bed.socket,
        FakeOptions {
            runtime_version: "restarted".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let h2 = connect(&mut rt).await;
    assert_eq!(h2.registration.plugin_name, "recorder");
    let s = wait_state(
        &mut state,
        |s| matches!(s, State::Ready { version, .. } if version == "restarted"),
    )
    .await;
    assert!(matches!(s, State::Ready { connection, .. } if connection > 1));
    h2.create_container(&pod("web"), &ctr("two", vec![]))
        .await
        .unwrap();
    assert_eq!(
        *bed.plugin.calls.lock().unwrap(),
        vec!["create web/one", "create web/two"]
    );
    rt.stop();
}

#[tokio::test]
async fn plugin_shutdown_closes_the_connection() {
    let bed = start_plugin(|_| {});
    let mut rt = FakeRuntime::start(&bed.socket, FakeOptions::default())
        .await
        .unwrap();
    let h = connect(&mut rt).await;
    bed.stop.cancel();
    assert!(
        h.wait_closed(WAIT).await,
        "plugin kept the connection open after shutdown"
    );
    rt.stop();
}

#[tokio::test]
async fn launched_plugin_serves_the_passed_connection_and_never_reconnects() {
    // A runtime that started the plugin from its plugin dir: no socket, one connection.
    let (rt, theirs) = FakeRuntime::launch(FakeOptions::default()).unwrap();
    let mut rt = rt;
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens here: a runner that tried to (re)connect would never reach a runtime.
    let unused = dir.path().join("no-nri.sock");
    let plugin = Arc::new(Recorder::default());
    let runner = Runner::launched(options(&unused), plugin.clone(), theirs).unwrap();
    assert!(runner.is_launched());
    let mut state = runner.state();
    let done = tokio::spawn(async move { runner.run(CancellationToken::new()).await });
    let h = connect(&mut rt).await;
    assert_eq!(h.registration.plugin_name, "recorder");
    assert_eq!(h.registration.plugin_idx, "42");
    wait_state(&mut state, |s| {
        matches!(s, State::Ready { connection: 1, .. })
    })
    .await;
    h.create_container(&pod("web"), &ctr("one", vec![]))
        .await
        .unwrap();
    assert_eq!(*plugin.calls.lock().unwrap(), vec!["create web/one"]);

    // The runtime goes away: the runner returns by itself, without a retry, even though
    // nobody cancelled it.
    rt.stop();
    tokio::time::timeout(WAIT, done)
        .await
        .expect("a launched runner returns when its connection closes")
        .unwrap();
    assert_eq!(*state.borrow(), State::Disconnected);
    assert!(!unused.exists());
}

#[tokio::test]
async fn launched_plugin_is_served_without_synchronize_like_containerd_1_7_does() {
    let (mut rt, theirs) = FakeRuntime::launch(FakeOptions {
        synchronize: false,
        ..Default::default()
    })
    .unwrap();
    let plugin = Arc::new(Recorder::default());
    let dir = tempfile::tempdir().unwrap();
    let runner = Runner::launched(
        options(&dir.path().join("unused.sock")),
        plugin.clone(),
        theirs,
    )
    .unwrap();
    let mut state = runner.state();
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move { runner.run(s).await });
    let h = connect(&mut rt).await;
    assert!(h.sync_replies.is_empty());
    // Served before and after the registration timeout (500 ms) has passed.
    h.create_container(&pod("web"), &ctr("early", vec![]))
        .await
        .unwrap();
    wait_state(&mut state, |s| matches!(s, State::Ready { .. })).await;
    h.create_container(&pod("web"), &ctr("late", vec![]))
        .await
        .unwrap();
    assert!(plugin.synced.lock().unwrap().is_empty());
    assert_eq!(
        *plugin.calls.lock().unwrap(),
        vec!["create web/early", "create web/late"]
    );
    stop.cancel();
    rt.stop();
}

#[test]
fn options_are_validated() {
    let plugin = Arc::new(Recorder::default());
    let mut o = Options::new("/x", "berth", "1");
    assert!(
        matches!(Runner::new(o.clone(), plugin.clone()), Err(Error::Options(m)) if m.contains("two digits"))
    );
    o.index = "10".into();
    o.name = "bad name".into();
    assert!(
        matches!(Runner::new(o.clone(), plugin.clone()), Err(Error::Options(m)) if m.contains("plugin name"))
    );
    o.name = "berth".into();
    o.max_frame = 5000;
    assert!(
        matches!(Runner::new(o.clone(), plugin.clone()), Err(Error::Options(m)) if m.contains("max_frame"))
    );
    o.max_frame = 4096;
    assert!(Runner::new(o, plugin).is_ok());
}
