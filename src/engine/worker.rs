//! A worker: one thread, one receive back end, the sockets and calls it owns. Nothing here is
//! shared per packet: counters are plain integers published to the scraper once per tick, and
//! commands arrive on a channel drained between waits.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use super::backend::{Backend, Datagram, Token};
use super::call::{EndReason, LegLive, LiveCall};
use super::{CallError, Clock, Event, LegSetup, Op, Request, StartCall, WorkerMsg, WorkerStats};
use crate::core::session::Session;

/// How often final audio is written to the spool.
const PUMP_EVERY_NS: u64 = 20_000_000;
/// How often timeouts are checked and counters published.
const HOUSEKEEPING_EVERY_NS: u64 = 250_000_000;

/// Limits a worker enforces on its calls.
#[derive(Debug, Clone, Copy)]
pub struct WorkerLimits {
    /// Finalise a call after this long (None: never).
    pub max_duration_ns: Option<u64>,
    /// Finalise a call whose legs all sent nothing for this long.
    pub silence_timeout_ns: u64,
    /// Report a leg silent after this long.
    pub leg_silent_ns: u64,
    /// How long a wait may last while calls are active.
    pub batch_wait: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Route {
    generation: u32,
    call: usize,
    leg: usize,
    last_overflow: u32,
    active: bool,
}

struct Owned {
    call: LiveCall,
    /// Route slots of every socket the call still has.
    routes: Vec<usize>,
}

/// Per-packet counters, published to [`WorkerStats`] once per housekeeping tick.
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    /// Leg counters of calls that have ended (active calls are added at each publish).
    ended_legs: crate::engine::LegTotals,
    /// Audio bytes of calls that have ended.
    ended_bytes: u64,
    datagrams: u64,
    bytes: u64,
    stale: u64,
    wrong_source: u64,
    kernel_drops: u64,
    truncated: u64,
}

/// The worker's state; runs on its own thread until told to shut down.
pub struct Worker {
    index: usize,
    backend: Box<dyn Backend>,
    clock: Clock,
    limits: WorkerLimits,
    spool: crate::engine::call::Spool,
    rx: Receiver<WorkerMsg>,
    events: Sender<Event>,
    stats: Arc<WorkerStats>,
    routes: Vec<Route>,
    free_routes: Vec<usize>,
    calls: Vec<Option<Owned>>,
    free_calls: Vec<usize>,
    by_id: HashMap<String, usize>,
    counters: Counters,
}

impl Worker {
    /// A worker around an opened back end.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        index: usize,
        backend: Box<dyn Backend>,
        clock: Clock,
        limits: WorkerLimits,
        spool: crate::engine::call::Spool,
        rx: Receiver<WorkerMsg>,
        events: Sender<Event>,
        stats: Arc<WorkerStats>,
    ) -> Self {
        Worker {
            index,
            backend,
            clock,
            limits,
            spool,
            rx,
            events,
            stats,
            routes: Vec::new(),
            free_routes: Vec::new(),
            calls: Vec::new(),
            free_calls: Vec::new(),
            by_id: HashMap::new(),
            counters: Counters::default(),
        }
    }

    /// Runs until a shutdown message (or the control plane going away).
    pub fn run(mut self) {
        let mut last_pump = 0;
        let mut last_housekeeping = 0;
        loop {
            let wait = if self.by_id.is_empty() { Duration::from_millis(20) } else { self.limits.batch_wait };
            if let Err(e) = self.poll(wait) {
                crate::log::error(&format!("worker {}: receive failed: {e}", self.index));
                std::thread::sleep(Duration::from_millis(10));
            }
            loop {
                match self.rx.try_recv() {
                    Ok(WorkerMsg::Call(req)) => self.handle(req),
                    Ok(WorkerMsg::Shutdown(done)) => {
                        self.shutdown();
                        let _ = done.send(());
                        return;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.shutdown();
                        return;
                    }
                }
            }
            let now = self.clock.now_ns();
            if now.saturating_sub(last_pump) >= PUMP_EVERY_NS {
                last_pump = now;
                for owned in self.calls.iter_mut().flatten() {
                    owned.call.pump(now);
                }
                self.stats.heartbeat.store(now, Ordering::Relaxed);
            }
            if now.saturating_sub(last_housekeeping) >= HOUSEKEEPING_EVERY_NS {
                last_housekeeping = now;
                self.housekeeping(now);
                self.publish();
            }
        }
    }

    fn poll(&mut self, wait: Duration) -> std::io::Result<usize> {
        let Worker { backend, clock, routes, calls, counters, .. } = self;
        backend.poll(wait, &mut |d: Datagram<'_>| on_datagram(clock, routes, calls, counters, d))
    }

    fn publish(&self) {
        let c = &self.counters;
        let s = &self.stats;
        s.datagrams.store(c.datagrams, Ordering::Relaxed);
        s.bytes.store(c.bytes, Ordering::Relaxed);
        s.stale.store(c.stale, Ordering::Relaxed);
        s.wrong_source.store(c.wrong_source, Ordering::Relaxed);
        s.kernel_drops.store(c.kernel_drops, Ordering::Relaxed);
        s.truncated.store(c.truncated, Ordering::Relaxed);
        s.calls.store(self.by_id.len() as u64, Ordering::Relaxed);
        // Once per housekeeping round (and at each call's end), never per packet.
        let mut legs = c.ended_legs;
        let mut bytes = c.ended_bytes;
        let mut streams = 0;
        for owned in self.calls.iter().flatten() {
            let (t, b) = owned.call.totals();
            legs = legs.plus(t);
            bytes += b;
            streams += owned.call.legs.iter().filter(|l| l.left_ms.is_none()).count() as u64;
        }
        s.legs.store(legs);
        s.bytes_written.store(bytes, Ordering::Relaxed);
        s.streams.store(streams, Ordering::Relaxed);
    }

    fn handle(&mut self, req: Request) {
        let now = self.clock.now_ns();
        let reply = match req.op {
            Op::Start(start) => self.start(req.call_id, *start, now),
            op => match self.by_id.get(&req.call_id).copied() {
                None => Err(CallError::unknown_call(&req.call_id)),
                Some(slot) => self.on_call(slot, op, now),
            },
        };
        // The requester may have timed out and gone: then the reply has nowhere to go.
        let _ = req.reply.send(reply);
    }

    fn start(&mut self, call_id: String, start: StartCall, now: u64) -> Result<Value, CallError> {
        if self.by_id.contains_key(&call_id) {
            return Err(CallError::new("call_exists", format!("call {call_id:?} is already being recorded")));
        }
        let specs = start.legs.iter().map(|l| l.spec.clone()).collect();
        let leg_channels: Vec<Option<u16>> = start.legs.iter().map(|l| l.channel).collect();
        let session = Session::new(start.recording, start.layout, specs, start.channels, now)
            .with_leg_channels(&leg_channels)
            .map_err(|e| CallError::new("bad_request", e.to_string()))?;
        let mut lives = Vec::new();
        let mut sockets = Vec::new();
        for (i, leg) in start.legs.into_iter().enumerate() {
            lives.push(leg_live(&leg));
            sockets.push((i, leg));
        }
        let call = LiveCall::create(
            call_id.clone(),
            start.recording_id,
            start.metadata,
            start.format,
            session,
            lives,
            &self.spool,
            SystemTime::now(),
            now,
        )
        .map_err(|e| CallError::new("spool_failed", format!("cannot create the recording file: {e}")))?;
        // Taken only once the call exists, so a refused start does not lose the slot.
        let slot = self.free_calls.pop().unwrap_or_else(|| {
            self.calls.push(None);
            self.calls.len() - 1
        });
        let mut owned = Owned { call, routes: Vec::new() };
        for (i, leg) in sockets {
            if let Err(e) = self.attach(slot, i, leg, &mut owned.routes) {
                for r in owned.routes.drain(..) {
                    self.detach(r);
                }
                self.free_calls.push(slot);
                // The ACD is told the start failed: the recording never began, so its files go.
                owned.call.discard();
                return Err(e);
            }
        }
        let reply = json!({"recording_id": owned.call.recording_id, "worker": self.index});
        self.calls[slot] = Some(owned);
        self.by_id.insert(call_id, slot);
        self.stats.recordings_started.fetch_add(1, Ordering::Relaxed);
        self.publish();
        Ok(reply)
    }

    fn attach(&mut self, call: usize, leg: usize, setup: LegSetup, routes: &mut Vec<usize>) -> Result<(), CallError> {
        let mut sockets = vec![setup.ports.rtp];
        sockets.extend(setup.ports.rtcp);
        for socket in sockets {
            let idx = self.free_routes.pop().unwrap_or_else(|| {
                self.routes.push(Route { generation: 0, call: 0, leg: 0, last_overflow: 0, active: false });
                self.routes.len() - 1
            });
            let r = &mut self.routes[idx];
            r.generation = r.generation.wrapping_add(1);
            *r = Route { generation: r.generation, call, leg, last_overflow: 0, active: true };
            let token = (u64::from(r.generation) << 32) | idx as u64;
            if let Err(e) = self.backend.add_socket(token, socket) {
                self.routes[idx].active = false;
                self.free_routes.push(idx);
                return Err(CallError::new("internal", format!("cannot receive on an RTP socket: {e}")));
            }
            routes.push(idx);
        }
        Ok(())
    }

    fn detach(&mut self, idx: usize) {
        let r = &mut self.routes[idx];
        if !r.active {
            return;
        }
        r.active = false;
        let token = (u64::from(r.generation) << 32) | idx as u64;
        if let Err(e) = self.backend.remove_socket(token) {
            crate::log::warn(&format!("worker {}: closing an RTP socket: {e}", self.index));
        }
        self.free_routes.push(idx);
    }

    fn on_call(&mut self, slot: usize, op: Op, now: u64) -> Result<Value, CallError> {
        let owned = self.calls[slot].as_mut().expect("indexed calls exist");
        let call = &mut owned.call;
        let state_err = |e: crate::core::session::SessionError| CallError::new("invalid_state", e.to_string());
        match op {
            Op::Start(_) => unreachable!("handled by start"),
            Op::Stop => Ok(self.end(slot, EndReason::Stopped, now)),
            Op::Pause(mode) => {
                call.set_paused(now, Some(mode)).map_err(state_err)?;
                call.save_sidecar(now);
                Ok(json!({"recording_id": call.recording_id, "paused": true, "mode": mode.name()}))
            }
            Op::Resume => {
                call.set_paused(now, None).map_err(state_err)?;
                call.save_sidecar(now);
                Ok(json!({"recording_id": call.recording_id, "paused": false}))
            }
            Op::Update(metadata) => {
                call.metadata.extend(metadata);
                call.save_sidecar(now);
                Ok(json!({"recording_id": call.recording_id, "metadata": call.metadata}))
            }
            Op::Status => Ok(call.summary(None, now, &[])),
            Op::AddLeg(setup) => {
                if call.legs.iter().any(|l| l.label == setup.spec.label && l.left_ms.is_none()) {
                    return Err(CallError::new(
                        "leg_exists",
                        format!("call {:?} already has a leg {:?}", call.call_id, setup.spec.label),
                    ));
                }
                let channel = setup.channel;
                let live = leg_live(&setup);
                let index = call
                    .session
                    .add_leg(now, setup.spec.clone(), channel)
                    .map_err(|e| CallError::new("bad_request", e.to_string()))?;
                call.leg_added(live)
                    .map_err(|e| CallError::new("spool_failed", format!("cannot create the leg's file: {e}")))?;
                let reply_channel = call.session.leg_channel(index);
                let mut routes = Vec::new();
                self.attach(slot, index, *setup, &mut routes)?;
                let owned = self.calls[slot].as_mut().expect("still there");
                owned.routes.extend(routes);
                owned.call.save_sidecar(now);
                Ok(json!({"recording_id": owned.call.recording_id, "channel": reply_channel}))
            }
            Op::RemoveLeg(label) => {
                let Some(index) = call.legs.iter().position(|l| l.label == label && l.left_ms.is_none()) else {
                    return Err(CallError::new(
                        "unknown_leg",
                        format!("call {:?} has no active leg {label:?}", call.call_id),
                    ));
                };
                call.session.remove_leg(now, index).map_err(state_err)?;
                call.legs[index].left_ms = Some(call.age_ms(now));
                let port = call.legs[index].port;
                let rid = call.recording_id.clone();
                let mine: Vec<usize> = owned.routes.iter().copied().filter(|&r| self.routes[r].leg == index).collect();
                owned.routes.retain(|r| !mine.contains(r));
                for r in mine {
                    self.detach(r);
                }
                if let Some(o) = self.calls[slot].as_ref() {
                    o.call.save_sidecar(now);
                }
                Ok(json!({"recording_id": rid, "released_port": port}))
            }
        }
    }

    /// Finalises a call and frees its sockets; returns its summary (also sent as an event).
    fn end(&mut self, slot: usize, reason: EndReason, now: u64) -> Value {
        let owned = self.calls[slot].take().expect("indexed calls exist");
        self.free_calls.push(slot);
        self.by_id.remove(&owned.call.call_id);
        for &r in &owned.routes {
            self.detach(r);
        }
        let call_id = owned.call.call_id.clone();
        let recording_id = owned.call.recording_id.clone();
        let finished = owned.call.finalize(reason, now);
        let (t, b) = finished.totals;
        self.counters.ended_legs = self.counters.ended_legs.plus(t);
        self.counters.ended_bytes += b;
        for &j in &finished.jitters {
            self.stats.jitter.observe(j);
        }
        let event = if finished.failed { "recording_failed" } else { "recording_finished" };
        if finished.failed {
            crate::log::error(&format!(
                "recording {recording_id} of call {call_id:?} failed: {}",
                finished.summary["error"].as_str().unwrap_or("unknown error")
            ));
        }
        let _ = self.events.send(Event { event, call_id, recording_id, body: finished.summary.clone() });
        self.publish();
        finished.summary
    }

    fn housekeeping(&mut self, now: u64) {
        let mut ending = Vec::new();
        for (slot, owned) in self.calls.iter_mut().enumerate() {
            let Some(owned) = owned else { continue };
            let call = &mut owned.call;
            if call.failure.is_some() {
                ending.push((slot, EndReason::WriteFailed));
                continue;
            }
            let age = now.saturating_sub(call.started_ns);
            if self.limits.max_duration_ns.is_some_and(|m| age >= m) {
                ending.push((slot, EndReason::MaxDuration));
                continue;
            }
            let active = call.legs.iter().filter(|l| l.left_ms.is_none());
            let last = active.filter_map(|l| l.last_packet_ns).max().unwrap_or(call.started_ns);
            if now.saturating_sub(last) >= self.limits.silence_timeout_ns {
                ending.push((slot, EndReason::SilenceTimeout));
                continue;
            }
            for leg in call.legs.iter_mut().filter(|l| l.left_ms.is_none()) {
                let since = now.saturating_sub(leg.last_packet_ns.unwrap_or(call.started_ns));
                if since >= self.limits.leg_silent_ns && !leg.silent_reported {
                    leg.silent_reported = true;
                    let _ = self.events.send(Event {
                        event: "leg_silent",
                        call_id: call.call_id.clone(),
                        recording_id: call.recording_id.clone(),
                        body: json!({"label": leg.label, "silent_for_ms": since / 1_000_000}),
                    });
                }
            }
        }
        for (slot, reason) in ending {
            self.end(slot, reason, now);
        }
    }

    fn shutdown(&mut self) {
        let now = self.clock.now_ns();
        let slots: Vec<usize> = self.by_id.values().copied().collect();
        for slot in slots {
            self.end(slot, EndReason::Shutdown, now);
        }
        self.backend.shutdown();
        self.publish();
    }
}

fn leg_live(setup: &LegSetup) -> LegLive {
    LegLive {
        label: setup.spec.label.clone(),
        port: setup.ports.port,
        rtcp_port: setup.ports.rtcp.as_ref().map(|_| setup.ports.port + 1),
        source: setup.source,
        last_src: None,
        last_packet_ns: None,
        wrong_source: 0,
        truncated: 0,
        kernel_drops: 0,
        silent_reported: false,
        left_ms: None,
    }
}

/// The hot path: route a datagram to its call's leg.
fn on_datagram(
    clock: &Clock,
    routes: &mut [Route],
    calls: &mut [Option<Owned>],
    counters: &mut Counters,
    d: Datagram<'_>,
) {
    counters.datagrams += 1;
    counters.bytes += d.payload.len() as u64;
    let Some(route) = lookup(routes, d.token) else {
        counters.stale += 1;
        return;
    };
    let Some(owned) = calls.get_mut(route.call).and_then(Option::as_mut) else {
        counters.stale += 1;
        return;
    };
    let call = &mut owned.call;
    let Some(leg) = call.legs.get_mut(route.leg) else { return };
    if let Some(total) = d.kernel_drops {
        let delta = total.wrapping_sub(route.last_overflow);
        route.last_overflow = total;
        leg.kernel_drops += u64::from(delta);
        counters.kernel_drops += u64::from(delta);
    }
    if !leg.source.allows(d.src) {
        leg.wrong_source += 1;
        counters.wrong_source += 1;
        return;
    }
    if d.truncated {
        leg.truncated += 1;
        counters.truncated += 1;
        return;
    }
    let now = clock.now_ns();
    leg.last_src = Some(d.src);
    leg.last_packet_ns = Some(now);
    leg.silent_reported = false;
    call.session.handle_datagram(now, route.leg, d.payload);
}

fn lookup(routes: &mut [Route], token: Token) -> Option<&mut Route> {
    let idx = (token & 0xffff_ffff) as usize;
    let generation = (token >> 32) as u32;
    routes.get_mut(idx).filter(|r| r.active && r.generation == generation)
}
