// Rebalance benchmark for scripts/bench.sh: N consumers of one group, each a KafkaConsumer in
// its own thread of this JVM (100 JVMs would not fit a 2-core machine), plus a producer thread
// that writes one small record to every partition every interval-ms, so that a member that
// owns a partition sees a record within about that interval.
//
// Usage: java -cp <kafka-clients jars>:<dir> RebalanceBench <bootstrap> <topic> <partitions>
//            <members> <eager|cooperative|consumer> [event-timeout-s] [interval-ms]
//   eager        group.protocol=classic, partition.assignment.strategy=RangeAssignor
//   cooperative  group.protocol=classic, partition.assignment.strategy=CooperativeStickyAssignor
//   consumer     group.protocol=consumer (KIP-848, the broker assigns; default "uniform" assignor)
// Every other consumer setting is the client's default (session.timeout.ms 45 s, heartbeat
// 3 s for classic; auto commit on; auto.offset.reset=latest).
//
// Steps: the N members join; once the group is stable (see below, and no assignment callback for
// SETTLE_MS) the measured events follow, each from a stable group:
//   join   an (N+1)th member is created and subscribes;
//   leave  member 0 (one of the first N) calls close(), which leaves the group.
// "Consumes again": the partitions are owned exactly once by the live members (as their
// assignment callbacks say), and every live member has polled at least one record after both
// the event and its own latest assignment callback (onPartitionsAssigned/Revoked/Lost). The
// figure is the time from the event to the last of those first records, in ms.
// Output on stdout, one line per event: "join ms=<ms>", "join timeout" (not converged within
// the bound) or "join failed" (a member's consumer threw, e.g. the broker does not support the
// protocol); likewise "leave". Details go to stderr. Every wait is bounded (event-timeout-s,
// default 120; the initial formation gets twice that), so the program always ends, with exit
// code 0 unless its arguments are wrong.
import java.time.Duration;
import java.util.*;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.kafka.clients.consumer.*;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.WakeupException;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public class RebalanceBench {
    static final long T0 = System.nanoTime();
    static final long SETTLE_MS = 7_000; // > the KIP-848 heartbeat interval (5 s)

    static long now() { return System.nanoTime() - T0 + 1; } // > 0, so 0 means "never"

    /** The event being measured (0 before the first one): records before it do not count. */
    static volatile long mark = 0;

    static String bootstrap, topic, mode, group;
    static int partitions;

    static final class Member implements Runnable, ConsumerRebalanceListener {
        final int id;
        final Set<Integer> owned = ConcurrentHashMap.newKeySet();
        volatile long lastCallback = 0;  // latest assignment callback
        volatile long firstRecord = 0;   // first poll with records after max(mark, lastCallback)
        final AtomicLong callbacks = new AtomicLong();
        volatile long records = 0;
        volatile boolean leave = false, stop = false, closed = false;
        volatile long closeMs = -1;
        volatile Throwable error;
        volatile KafkaConsumer<byte[], byte[]> consumer;
        final Thread thread;

        Member(int id) {
            this.id = id;
            thread = new Thread(this, "member-" + id);
            thread.setDaemon(true);
        }

        public void onPartitionsRevoked(Collection<TopicPartition> parts) {
            parts.forEach(tp -> owned.remove(tp.partition()));
            callback();
        }
        public void onPartitionsLost(Collection<TopicPartition> parts) {
            parts.forEach(tp -> owned.remove(tp.partition()));
            callback();
        }
        public void onPartitionsAssigned(Collection<TopicPartition> parts) {
            parts.forEach(tp -> owned.add(tp.partition()));
            callback();
        }
        void callback() { callbacks.incrementAndGet(); lastCallback = now(); }

        public void run() {
            Properties p = new Properties();
            p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
            p.put(ConsumerConfig.GROUP_ID_CONFIG, group);
            p.put(ConsumerConfig.CLIENT_ID_CONFIG, group + "-m" + id);
            if (mode.equals("consumer")) {
                p.put(ConsumerConfig.GROUP_PROTOCOL_CONFIG, "consumer");
            } else {
                p.put(ConsumerConfig.GROUP_PROTOCOL_CONFIG, "classic");
                p.put(ConsumerConfig.PARTITION_ASSIGNMENT_STRATEGY_CONFIG, mode.equals("eager")
                    ? RangeAssignor.class.getName() : CooperativeStickyAssignor.class.getName());
            }
            try (KafkaConsumer<byte[], byte[]> c =
                     new KafkaConsumer<>(p, new ByteArrayDeserializer(), new ByteArrayDeserializer())) {
                consumer = c;
                c.subscribe(List.of(topic), this);
                while (!stop && !leave) {
                    ConsumerRecords<byte[], byte[]> rs;
                    try {
                        rs = c.poll(Duration.ofMillis(100));
                    } catch (WakeupException e) {
                        continue;
                    }
                    if (!rs.isEmpty()) {
                        long t = now();
                        long since = Math.max(mark, lastCallback);
                        if (firstRecord == 0 || firstRecord < since) firstRecord = t;
                        records += rs.count();
                    }
                }
                long t = now();
                c.close(CloseOptions.timeout(Duration.ofSeconds(30)));
                closeMs = (now() - t) / 1_000_000;
            } catch (Throwable e) {
                error = e;
            } finally {
                closed = true;
            }
        }

        /** True once this member has polled a record after the event and its latest callback. */
        boolean consumesAgain() {
            long first = firstRecord; // read before lastCallback: a callback in between makes this false
            long since = Math.max(mark, lastCallback);
            return first != 0 && first >= since;
        }
    }

    static final List<Member> live = new CopyOnWriteArrayList<>();
    static final List<Member> all = new CopyOnWriteArrayList<>();

    static Member add(int id) {
        Member m = new Member(id);
        all.add(m);
        live.add(m);
        m.thread.start();
        return m;
    }

    /** Why the group does not consume yet ("" once it does). */
    static String notConverged() {
        int[] owners = new int[partitions];
        int notReady = 0, errors = 0;
        for (Member m : live) {
            if (m.error != null || m.closed) errors++;
            if (!m.consumesAgain()) notReady++;
            for (Integer tp : m.owned.toArray(new Integer[0])) if (tp < partitions) owners[tp]++;
        }
        int unowned = 0, shared = 0;
        for (int o : owners) { if (o == 0) unowned++; if (o > 1) shared++; }
        if (notReady == 0 && unowned == 0 && shared == 0 && errors == 0) return "";
        return notReady + " of " + live.size() + " members without a record since their latest callback, "
            + unowned + " partitions unowned, " + shared + " owned twice, " + errors + " members failed";
    }

    /** The first error of a live member (its consumer thread ended), or null. */
    static String failure() {
        for (Member m : live) {
            if (m.error != null) return "member " + m.id + " failed: " + m.error;
            if (m.closed) return "member " + m.id + " stopped";
        }
        return null;
    }

    /** Waits until the group consumes again; the ms from `from` to the last first record, or -1. */
    static long awaitConverged(long from, long timeoutMs) throws InterruptedException {
        long deadline = System.currentTimeMillis() + timeoutMs;
        String why = "?";
        while (System.currentTimeMillis() < deadline) {
            String failed = failure();
            if (failed != null) {
                System.err.println("  giving up: " + failed);
                return -1;
            }
            why = notConverged();
            if (why.isEmpty()) {
                long last = 0;
                for (Member m : live) last = Math.max(last, m.firstRecord);
                return Math.max(0, last - from) / 1_000_000;
            }
            Thread.sleep(10);
        }
        System.err.println("  not converged after " + timeoutMs + " ms: " + why);
        return -1;
    }

    /** Waits until the group consumes and no callback happened for SETTLE_MS. */
    static boolean awaitStable(long timeoutMs) throws InterruptedException {
        long deadline = System.currentTimeMillis() + timeoutMs;
        while (System.currentTimeMillis() < deadline) {
            String failed = failure();
            if (failed != null) {
                System.err.println("  giving up: " + failed);
                return false;
            }
            long quietSince = 0;
            for (Member m : live) quietSince = Math.max(quietSince, m.lastCallback);
            if (notConverged().isEmpty() && now() - quietSince >= SETTLE_MS * 1_000_000) return true;
            Thread.sleep(50);
        }
        System.err.println("  group not stable after " + timeoutMs + " ms: " + notConverged());
        return false;
    }

    static long totalCallbacks() {
        long n = 0;
        for (Member m : all) n += m.callbacks.get();
        return n;
    }

    /** Measures one event; prints "<name> ms=<ms>" or "<name> timeout". */
    static void measure(String name, long t, long timeoutMs, long callbacksBefore) throws InterruptedException {
        long ms = awaitConverged(t, timeoutMs);
        long assigned = 0;
        for (Member m : live) assigned = Math.max(assigned, m.lastCallback);
        String detail = String.format(Locale.ROOT, "  %s: %d members, %d assignment callbacks, last callback %s",
            name, live.size(), totalCallbacks() - callbacksBefore,
            assigned > t ? ((assigned - t) / 1_000_000) + " ms after the event" : "before the event");
        System.out.println(ms >= 0 ? name + " ms=" + ms : failure() != null ? name + " failed" : name + " timeout");
        System.out.flush();
        System.err.println(detail);
        if (ms >= 0) {
            // A measured convergence followed by another rebalance round would be misleading.
            long c = totalCallbacks();
            Thread.sleep(3_000);
            if (totalCallbacks() > c)
                System.err.println("  note: " + (totalCallbacks() - c) + " more callbacks within 3 s after convergence");
        }
    }

    public static void main(String[] a) throws Exception {
        bootstrap = a[0]; topic = a[1]; partitions = Integer.parseInt(a[2]);
        int n = Integer.parseInt(a[3]);
        mode = a[4];
        long timeoutMs = (a.length > 5 ? Long.parseLong(a[5]) : 120) * 1000;
        long intervalMs = a.length > 6 ? Long.parseLong(a[6]) : 100;
        if (!Set.of("eager", "cooperative", "consumer").contains(mode)) throw new IllegalArgumentException(mode);
        if (partitions < n + 1) throw new IllegalArgumentException("need at least members + 1 partitions");
        group = "rebalance-" + mode + "-n" + n + "-" + Long.toHexString(System.currentTimeMillis());

        Thread producer = new Thread(() -> produce(intervalMs), "producer");
        producer.setDaemon(true);
        producer.start();

        System.err.printf(Locale.ROOT, "%s: %d members, topic %s (%d partitions), a record to every partition every %d ms%n",
            group, n, topic, partitions, intervalMs);
        long t = now();
        for (int i = 0; i < n; i++) add(i);
        boolean stable = awaitStable(2 * timeoutMs);
        System.err.printf(Locale.ROOT, "  formation: %s after %d ms%n", stable ? "stable" : "NOT stable", (now() - t) / 1_000_000);

        if (stable) {
            long c = totalCallbacks();
            t = now();
            mark = t;
            add(n);
            measure("join", t, timeoutMs, c);
        } else {
            System.out.println(failure() != null ? "join failed" : "join timeout");
        }

        if (stable && awaitStable(timeoutMs)) {
            Member victim = live.get(0);
            long c = totalCallbacks();
            t = now();
            mark = t;
            live.remove(victim);
            victim.leave = true;
            KafkaConsumer<byte[], byte[]> vc = victim.consumer;
            if (vc != null) vc.wakeup();
            measure("leave", t, timeoutMs, c);
            System.err.println("  the leaving member's close() took " + victim.closeMs + " ms");
        } else {
            System.out.println(failure() != null ? "leave failed" : "leave timeout");
        }
        System.out.flush();

        // Stop every member (each closes its consumer, leaving the group), bounded.
        for (Member m : all) {
            m.stop = true;
            KafkaConsumer<byte[], byte[]> c = m.consumer;
            if (c != null) c.wakeup();
        }
        long deadline = System.currentTimeMillis() + 60_000;
        for (Member m : all) m.thread.join(Math.max(1, deadline - System.currentTimeMillis()));
        long failedMembers = all.stream().filter(m -> m.error != null).count();
        all.stream().filter(m -> m.error != null).limit(3)
            .forEach(m -> System.err.println("  member " + m.id + " failed: " + m.error));
        if (failedMembers > 3) System.err.println("  (" + failedMembers + " members failed in all)");
        System.err.println("  records consumed: " + all.stream().mapToLong(m -> m.records).sum()
            + ", produced: " + produced.get() + ", produce errors: " + produceErrors.get());
        System.exit(0);
    }

    static final AtomicLong produced = new AtomicLong(), produceErrors = new AtomicLong();

    static void produce(long intervalMs) {
        Properties p = new Properties();
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ProducerConfig.LINGER_MS_CONFIG, "5");
        p.put(ProducerConfig.CLIENT_ID_CONFIG, "rebalance-bench-producer");
        byte[] value = new byte[100];
        try (KafkaProducer<byte[], byte[]> prod =
                 new KafkaProducer<>(p, new ByteArraySerializer(), new ByteArraySerializer())) {
            long next = System.currentTimeMillis();
            while (true) {
                for (int i = 0; i < partitions; i++)
                    prod.send(new ProducerRecord<>(topic, i, null, value), (md, e) -> {
                        if (e == null) produced.incrementAndGet(); else produceErrors.incrementAndGet();
                    });
                next += intervalMs;
                long sleep = next - System.currentTimeMillis();
                if (sleep > 0) Thread.sleep(sleep); else next = System.currentTimeMillis();
            }
        } catch (InterruptedException e) {
            // exit
        }
    }
}
