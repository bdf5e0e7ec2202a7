// Admin-side steps of scripts/bench-cluster.sh, the same Java client for Oxbow and Kafka.
// Every command prints one "key=value ..." line on stdout (times in seconds, wall clock
// in epoch milliseconds where another process must line up with it) and exits non-zero
// on failure or when its timeout passes.
//
//   BenchCluster create-topics BOOT PREFIX COUNT PARTITIONS RF TIMEOUT_S [key=value configs]
//       creates PREFIX0..PREFIX{COUNT-1} (in requests of 10 topics) and waits until Metadata
//       gives every partition a leader; "seconds=S partitions=N"
//   BenchCluster move-all BOOT TOPIC BROKER TIMEOUT_S
//       moves every partition of TOPIC to BROKER (alterPartitionReassignments, one replica;
//       BROKER "rr": partition i to the i-th live broker, round robin) and waits until
//       Metadata shows those leaders; "seconds=S moved=N"
//   BenchCluster noop-moves BOOT PREFIX COUNT THREADS MAX_MOVES TIMEOUT_S STOP_FILE
//       asks, THREADS requests at a time of 100 partitions each, to move partitions of
//       PREFIX0..PREFIX{COUNT-1} to the broker that already leads them, until MAX_MOVES
//       were asked or STOP_FILE exists (Oxbow: each is one Raft entry that changes
//       nothing); "moves=N seconds=S"
//   BenchCluster reassign BOOT TOPIC TIMEOUT_S
//       moves partition 0 of TOPIC from its leader to another live broker and times:
//       the request (alter), Metadata showing the new leader, a produce (acks=all)
//       acknowledged after that, and a fetch of that record;
//       "from=L to=T end_offset=E alter_s=.. metadata_s=.. produce_s=.. fetch_s=.."
//   BenchCluster quorum-leader BOOT_CONTROLLERS
//       Kafka only: the active controller per DescribeMetadataQuorum;
//       "leader=ID epoch=E high_watermark=H"
//   BenchCluster quorum-wait BOOT_CONTROLLERS TIMEOUT_S
//       Kafka only: prints "polling leader=OLD" once connected and a leader is known, then
//       polls DescribeMetadataQuorum until a leader other than OLD answers;
//       "leader=ID epoch=E seen_ms=EPOCH_MS polls=N"
import java.time.Duration;
import java.util.*;
import java.util.concurrent.*;
import java.util.concurrent.atomic.*;
import org.apache.kafka.clients.admin.*;
import org.apache.kafka.clients.consumer.*;
import org.apache.kafka.clients.producer.*;
import org.apache.kafka.common.*;
import org.apache.kafka.common.serialization.*;

public class BenchCluster {
    public static void main(String[] a) throws Exception {
        switch (a[0]) {
            case "create-topics" -> createTopics(a);
            case "move-all" -> moveAll(a[1], a[2], a[3], Long.parseLong(a[4]));
            case "noop-moves" -> noopMoves(a[1], a[2], Integer.parseInt(a[3]), Integer.parseInt(a[4]),
                Long.parseLong(a[5]), Long.parseLong(a[6]), a[7]);
            case "reassign" -> reassign(a[1], a[2], Long.parseLong(a[3]));
            case "prime" -> prime(a[1], a[2]);
            case "quorum-leader" -> quorumLeader(a[1]);
            case "quorum-wait" -> quorumWait(a[1], Long.parseLong(a[2]));
            default -> throw new IllegalArgumentException("unknown command " + a[0]);
        }
        System.exit(0);  // do not wait for client threads
    }

    static Admin admin(String boot) {
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, boot);
        p.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "30000");
        p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "120000");
        p.put(AdminClientConfig.RETRY_BACKOFF_MS_CONFIG, "20");
        p.put(AdminClientConfig.RETRY_BACKOFF_MAX_MS_CONFIG, "200");
        return Admin.create(p);
    }

    static Admin controllerAdmin(String controllers) {
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_CONTROLLERS_CONFIG, controllers);
        p.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "500");
        p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "1000");
        p.put(AdminClientConfig.RETRY_BACKOFF_MS_CONFIG, "20");
        p.put(AdminClientConfig.RETRY_BACKOFF_MAX_MS_CONFIG, "100");
        p.put(AdminClientConfig.RECONNECT_BACKOFF_MS_CONFIG, "20");
        p.put(AdminClientConfig.RECONNECT_BACKOFF_MAX_MS_CONFIG, "100");
        return Admin.create(p);
    }

    static double since(long t0) { return (System.nanoTime() - t0) / 1e9; }

    static void check(long deadline, String what) {
        if (System.currentTimeMillis() > deadline) throw new IllegalStateException("timed out: " + what);
    }

    /** partition -> leader id (-1: none) of each topic, per Metadata (DescribeTopicPartitions). */
    static Map<String, TopicDescription> describe(Admin admin, Collection<String> topics) throws Exception {
        return admin.describeTopics(topics).allTopicNames().get(60, TimeUnit.SECONDS);
    }

    static void createTopics(String[] a) throws Exception {
        String boot = a[1], prefix = a[2];
        int count = Integer.parseInt(a[3]), partitions = Integer.parseInt(a[4]);
        short rf = Short.parseShort(a[5]);
        long deadline = System.currentTimeMillis() + Long.parseLong(a[6]) * 1000;
        Map<String, String> configs = new HashMap<>();
        for (int i = 7; i < a.length; i++) { String[] kv = a[i].split("=", 2); configs.put(kv[0], kv[1]); }
        List<String> names = new ArrayList<>();
        for (int i = 0; i < count; i++) names.add(prefix + i);
        long t0 = System.nanoTime();
        try (Admin admin = admin(boot)) {
            for (int i = 0; i < count; i += 10) {
                List<NewTopic> batch = new ArrayList<>();
                for (String n : names.subList(i, Math.min(count, i + 10)))
                    batch.add(new NewTopic(n, partitions, rf).configs(configs));
                admin.createTopics(batch).all().get(300, TimeUnit.SECONDS);
                check(deadline, "creating topics");
            }
            waitLeaders(admin, names, partitions, -1, deadline);
        }
        System.out.printf(Locale.ROOT, "seconds=%.3f partitions=%d%n", since(t0), count * partitions);
    }

    /** Until every partition of `topics` has a leader (that is `broker`, unless -1). */
    static void waitLeaders(Admin admin, List<String> topics, int partitions, int broker, long deadline)
            throws Exception {
        List<String> pending = new ArrayList<>(topics);
        while (!pending.isEmpty()) {
            check(deadline, "leaders of " + pending.size() + " topics, e.g. " + pending.get(0));
            List<String> next = new ArrayList<>();
            for (int i = 0; i < pending.size(); i += 100) {
                List<String> chunk = pending.subList(i, Math.min(pending.size(), i + 100));
                Map<String, TopicDescription> d;
                try {
                    d = describe(admin, chunk);
                } catch (ExecutionException e) {
                    next.addAll(chunk);  // not all known yet
                    continue;
                }
                for (String t : chunk) {
                    TopicDescription td = d.get(t);
                    boolean ok = td != null && td.partitions().size() == partitions;
                    if (ok) for (TopicPartitionInfo p : td.partitions())
                        ok &= p.leader() != null && p.leader().id() >= 0 && (broker < 0 || p.leader().id() == broker);
                    if (!ok) next.add(t);
                }
            }
            pending = next;
            if (!pending.isEmpty()) Thread.sleep(100);
        }
    }

    static void moveAll(String boot, String topic, String broker, long timeoutS) throws Exception {
        long deadline = System.currentTimeMillis() + timeoutS * 1000;
        long t0 = System.nanoTime();
        try (Admin admin = admin(boot)) {
            List<Integer> live = new ArrayList<>();
            for (Node n : admin.describeCluster().nodes().get(60, TimeUnit.SECONDS)) live.add(n.id());
            Collections.sort(live);
            TopicDescription td = describe(admin, List.of(topic)).get(topic);
            Map<TopicPartition, Optional<NewPartitionReassignment>> moves = new HashMap<>();
            Map<Integer, Integer> want = new HashMap<>();
            for (TopicPartitionInfo p : td.partitions()) {
                int to = broker.equals("rr") ? live.get(p.partition() % live.size()) : Integer.parseInt(broker);
                want.put(p.partition(), to);
                moves.put(new TopicPartition(topic, p.partition()), Optional.of(new NewPartitionReassignment(List.of(to))));
            }
            admin.alterPartitionReassignments(moves).all().get(timeoutS, TimeUnit.SECONDS);
            while (true) {
                check(deadline, "leaders of " + topic + " to be " + want);
                boolean ok = true;
                for (TopicPartitionInfo p : describe(admin, List.of(topic)).get(topic).partitions())
                    ok &= p.leader() != null && p.leader().id() == want.get(p.partition());
                if (ok) break;
                Thread.sleep(100);
            }
            System.out.printf(Locale.ROOT, "seconds=%.3f moved=%d leaders=%s%n", since(t0), moves.size(), want.values());
        }
    }

    static void noopMoves(String boot, String prefix, int count, int threads, long maxMoves, long timeoutS,
                          String stopFile) throws Exception {
        long deadline = System.currentTimeMillis() + timeoutS * 1000;
        java.io.File stop = new java.io.File(stopFile);
        List<String> names = new ArrayList<>();
        for (int i = 0; i < count; i++) names.add(prefix + i);
        // Every partition with the broker that leads it now.
        List<Map.Entry<TopicPartition, Integer>> owners = new ArrayList<>();
        try (Admin admin = admin(boot)) {
            for (int i = 0; i < names.size(); i += 100) {
                Map<String, TopicDescription> d = describe(admin, names.subList(i, Math.min(names.size(), i + 100)));
                for (TopicDescription td : d.values())
                    for (TopicPartitionInfo p : td.partitions())
                        owners.add(Map.entry(new TopicPartition(td.name(), p.partition()), p.leader().id()));
            }
        }
        AtomicLong asked = new AtomicLong();
        AtomicReference<Throwable> failure = new AtomicReference<>();
        long t0 = System.nanoTime();
        List<Thread> workers = new ArrayList<>();
        for (int w = 0; w < threads; w++) {
            final int offset = w;
            Thread t = new Thread(() -> {
                // One admin client (connection) per thread: requests on separate connections run concurrently.
                try (Admin admin = admin(boot)) {
                    int chunk = Math.min(100, owners.size());
                    int i = offset * chunk;
                    while (!stop.exists() && failure.get() == null && System.currentTimeMillis() < deadline) {
                        long before = asked.getAndAdd(chunk);
                        if (before >= maxMoves) break;
                        Map<TopicPartition, Optional<NewPartitionReassignment>> moves = new HashMap<>();
                        for (int k = 0; k < chunk; k++) {
                            var e = owners.get((i + k) % owners.size());
                            moves.put(e.getKey(), Optional.of(new NewPartitionReassignment(List.of(e.getValue()))));
                        }
                        i = (i + threads * chunk) % owners.size();
                        admin.alterPartitionReassignments(moves).all().get(120, TimeUnit.SECONDS);
                    }
                } catch (Throwable e) {
                    failure.compareAndSet(null, e);
                }
            });
            t.start();
            workers.add(t);
        }
        for (Thread t : workers) t.join();
        if (failure.get() != null) throw new RuntimeException("no-op moves failed", failure.get());
        System.out.printf(Locale.ROOT, "moves=%d seconds=%.3f%n", Math.min(asked.get(), maxMoves), since(t0));
    }

    static void reassign(String boot, String topic, long timeoutS) throws Exception {
        long deadline = System.currentTimeMillis() + timeoutS * 1000;
        TopicPartition tp = new TopicPartition(topic, 0);
        Properties pp = new Properties();
        pp.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, boot);
        pp.put(ProducerConfig.ACKS_CONFIG, "all");
        pp.put(ProducerConfig.LINGER_MS_CONFIG, "0");
        pp.put(ProducerConfig.RETRY_BACKOFF_MS_CONFIG, "20");
        pp.put(ProducerConfig.RETRY_BACKOFF_MAX_MS_CONFIG, "200");
        pp.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, String.valueOf(timeoutS * 1000));
        pp.put(ProducerConfig.REQUEST_TIMEOUT_MS_CONFIG, "30000");
        Properties cp = new Properties();
        cp.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, boot);
        cp.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        cp.put(ConsumerConfig.RETRY_BACKOFF_MS_CONFIG, "20");
        cp.put(ConsumerConfig.RETRY_BACKOFF_MAX_MS_CONFIG, "200");
        cp.put(ConsumerConfig.MAX_PARTITION_FETCH_BYTES_CONFIG, "65536");
        try (Admin admin = admin(boot);
             KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(pp, new ByteArraySerializer(), new ByteArraySerializer());
             KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(cp, new ByteArrayDeserializer(), new ByteArrayDeserializer())) {
            int from = describe(admin, List.of(topic)).get(topic).partitions().get(0).leader().id();
            List<Integer> live = new ArrayList<>();
            for (Node n : admin.describeCluster().nodes().get(60, TimeUnit.SECONDS)) live.add(n.id());
            Collections.sort(live);
            int to = -1;
            for (int id : live) if (id > from) { to = id; break; }
            if (to < 0) for (int id : live) if (id != from) { to = id; break; }
            if (to < 0) throw new IllegalStateException("no other live broker than " + from + ": " + live);
            // Warm the clients (connections, metadata) so that their start-up is not timed.
            producer.partitionsFor(topic);
            consumer.assign(List.of(tp));
            long end = consumer.endOffsets(List.of(tp), Duration.ofSeconds(60)).get(tp);

            long t0 = System.nanoTime(), t0Ms = System.currentTimeMillis();
            admin.alterPartitionReassignments(Map.of(tp, Optional.of(new NewPartitionReassignment(List.of(to)))))
                .all().get(timeoutS, TimeUnit.SECONDS);
            double alter = since(t0);
            while (true) {
                check(deadline, "Metadata to show broker " + to + " leading " + tp);
                TopicPartitionInfo p = describe(admin, List.of(topic)).get(topic).partitions().get(0);
                if (p.leader() != null && p.leader().id() == to) break;
                Thread.sleep(20);
            }
            double metadata = since(t0);
            RecordMetadata md = producer.send(new ProducerRecord<>(topic, 0, null, "after-move".getBytes()))
                .get(timeoutS, TimeUnit.SECONDS);
            double produce = since(t0);
            consumer.seek(tp, md.offset());
            boolean found = false;
            while (!found) {
                check(deadline, "fetching offset " + md.offset() + " of " + tp);
                for (ConsumerRecord<byte[], byte[]> r : consumer.poll(Duration.ofMillis(100)))
                    found |= r.offset() == md.offset();
            }
            double fetch = since(t0);
            int leaderAfter = describe(admin, List.of(topic)).get(topic).partitions().get(0).leader().id();
            System.out.printf(Locale.ROOT,
                "from=%d to=%d end_offset=%d acked_offset=%d leader_after=%d alter_s=%.3f metadata_s=%.3f produce_s=%.3f fetch_s=%.3f start_ms=%d%n",
                from, to, end, md.offset(), leaderAfter, alter, metadata, produce, fetch, t0Ms);
        }
    }

    /** One record to every partition of TOPIC (acks=all), so that each of its leaders commits once. */
    static void prime(String boot, String topic) throws Exception {
        Properties pp = new Properties();
        pp.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, boot);
        pp.put(ProducerConfig.ACKS_CONFIG, "all");
        pp.put(ProducerConfig.LINGER_MS_CONFIG, "5");
        long t0 = System.nanoTime();
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(pp, new ByteArraySerializer(), new ByteArraySerializer())) {
            List<Future<RecordMetadata>> sent = new ArrayList<>();
            for (PartitionInfo p : producer.partitionsFor(topic))
                sent.add(producer.send(new ProducerRecord<>(topic, p.partition(), null, "prime".getBytes())));
            for (Future<RecordMetadata> f : sent) f.get(120, TimeUnit.SECONDS);
            System.out.printf(Locale.ROOT, "primed=%d seconds=%.3f%n", sent.size(), since(t0));
        }
    }

    static void quorumLeader(String controllers) throws Exception {
        try (Admin admin = controllerAdmin(controllers)) {
            for (int i = 0; ; i++) {
                try {
                    QuorumInfo q = admin.describeMetadataQuorum().quorumInfo().get(2, TimeUnit.SECONDS);
                    if (q.leaderId() >= 0) {
                        System.out.printf(Locale.ROOT, "leader=%d epoch=%d high_watermark=%d%n",
                            q.leaderId(), q.leaderEpoch(), q.highWatermark());
                        return;
                    }
                } catch (ExecutionException | TimeoutException e) {
                    if (i > 100) throw e;
                }
                Thread.sleep(100);
            }
        }
    }

    static void quorumWait(String controllers, long timeoutS) throws Exception {
        long deadline = System.currentTimeMillis() + timeoutS * 1000;
        int old = -1;
        while (old < 0) {
            check(deadline, "DescribeMetadataQuorum to name a leader");
            try (Admin admin = controllerAdmin(controllers)) {
                old = admin.describeMetadataQuorum().quorumInfo().get(5, TimeUnit.SECONDS).leaderId();
            } catch (ExecutionException | TimeoutException e) {
                Thread.sleep(100);  // a fresh JVM on a busy machine: the first calls may time out
            }
        }
        System.out.println("polling leader=" + old);
        System.out.flush();
        String lastError = "none";
        // A fresh admin client per poll (it bootstraps from the controller list again), as
        // `oxbow metadata-quorum describe` is a fresh process per poll: a client that still
        // waits on the dead leader would only measure its own timeouts.
        for (long polls = 1; ; polls++) {
            if (System.currentTimeMillis() > deadline)
                throw new IllegalStateException("timed out waiting for a controller leader other than " + old
                    + "; last error: " + lastError);
            Admin admin = controllerAdmin(controllers);
            try {
                QuorumInfo q = admin.describeMetadataQuorum().quorumInfo().get(1, TimeUnit.SECONDS);
                if (q.leaderId() >= 0 && q.leaderId() != old) {
                    System.out.printf(Locale.ROOT, "leader=%d epoch=%d seen_ms=%d polls=%d%n",
                        q.leaderId(), q.leaderEpoch(), System.currentTimeMillis(), polls);
                    return;
                }
            } catch (ExecutionException | TimeoutException e) {
                lastError = String.valueOf(e.getCause() != null ? e.getCause() : e);
            } finally {
                admin.close(Duration.ZERO);
            }
            Thread.sleep(20);
        }
    }
}
