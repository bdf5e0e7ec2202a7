// Reads every partition of a topic from offset 0 to its end offset (taken at start)
// with assign() (no consumer group) and prints records, bytes and elapsed time.
// Usage: java -cp <kafka-clients jars>:<dir> BenchConsumer <bootstrap> <topic> [timeout-seconds]
// Output (one line on stdout): "records=N bytes=B seconds=S mib_per_sec=M records_per_sec=R expected=E"
//
// BenchConsumer --wait-ready <bootstrap> <topic> <partitions> [timeout-seconds]
// waits until the topic has that many partitions and every one answers ListOffsets
// (its leader has opened it), so that a benchmark does not time topic creation.
import java.time.Duration;
import java.util.*;
import org.apache.kafka.clients.consumer.*;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

public class BenchConsumer {
    public static void main(String[] args) throws Exception {
        if (args[0].equals("--wait-ready")) {
            waitReady(args[1], args[2], Integer.parseInt(args[3]), args.length > 4 ? Long.parseLong(args[4]) : 180);
            return;
        }
        String bootstrap = args[0], topic = args[1];
        long timeoutMs = (args.length > 2 ? Long.parseLong(args[2]) : 600) * 1000L;
        Properties p = new Properties();
        p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        p.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        p.put(ConsumerConfig.MAX_POLL_RECORDS_CONFIG, "10000");
        p.put(ConsumerConfig.CLIENT_ID_CONFIG, "oxbow-bench-consumer");
        try (KafkaConsumer<byte[], byte[]> c =
                 new KafkaConsumer<>(p, new ByteArrayDeserializer(), new ByteArrayDeserializer())) {
            List<PartitionInfo> infos = c.partitionsFor(topic, Duration.ofSeconds(60));
            if (infos == null || infos.isEmpty()) throw new IllegalStateException("no partitions for " + topic);
            List<TopicPartition> tps = new ArrayList<>();
            for (PartitionInfo i : infos) tps.add(new TopicPartition(topic, i.partition()));
            c.assign(tps);
            c.seekToBeginning(tps);
            Map<TopicPartition, Long> end = c.endOffsets(tps, Duration.ofSeconds(60));
            Set<TopicPartition> pending = new HashSet<>();
            long expected = 0;
            for (TopicPartition tp : tps) {
                long e = end.get(tp);
                expected += e;
                if (e > 0) pending.add(tp); else c.pause(List.of(tp));
            }
            long records = 0, bytes = 0;
            long start = System.nanoTime();
            long deadline = System.currentTimeMillis() + timeoutMs;
            while (!pending.isEmpty()) {
                if (System.currentTimeMillis() > deadline)
                    throw new IllegalStateException("timed out: " + records + " of " + expected + " records read, "
                        + pending.size() + " partitions unfinished");
                ConsumerRecords<byte[], byte[]> rs = c.poll(Duration.ofMillis(500));
                for (ConsumerRecord<byte[], byte[]> r : rs) {
                    records++;
                    bytes += Math.max(0, r.serializedKeySize()) + Math.max(0, r.serializedValueSize());
                }
                List<TopicPartition> done = new ArrayList<>();
                for (TopicPartition tp : rs.partitions())
                    if (c.position(tp) >= end.get(tp)) done.add(tp);
                if (!done.isEmpty()) { pending.removeAll(done); c.pause(done); }
            }
            double s = (System.nanoTime() - start) / 1e9;
            System.out.printf(Locale.ROOT, "records=%d bytes=%d seconds=%.3f mib_per_sec=%.2f records_per_sec=%.1f expected=%d%n",
                records, bytes, s, bytes / s / (1024.0 * 1024.0), records / s, expected);
        }
    }

    static void waitReady(String bootstrap, String topic, int partitions, long timeoutS) throws Exception {
        Properties p = new Properties();
        p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        p.put(ConsumerConfig.CLIENT_ID_CONFIG, "oxbow-bench-wait");
        long start = System.nanoTime(), deadline = System.currentTimeMillis() + timeoutS * 1000;
        try (KafkaConsumer<byte[], byte[]> c =
                 new KafkaConsumer<>(p, new ByteArrayDeserializer(), new ByteArrayDeserializer())) {
            while (true) {
                List<PartitionInfo> infos = c.partitionsFor(topic, Duration.ofSeconds(30));
                boolean led = infos != null && infos.size() == partitions;
                if (led) for (PartitionInfo i : infos) led &= i.leader() != null && !i.leader().isEmpty();
                if (led) {
                    List<TopicPartition> tps = new ArrayList<>();
                    for (PartitionInfo i : infos) tps.add(new TopicPartition(topic, i.partition()));
                    try {
                        c.endOffsets(tps, Duration.ofSeconds(10));
                        break;
                    } catch (org.apache.kafka.common.errors.TimeoutException e) {
                        // not every partition is open yet
                    }
                }
                if (System.currentTimeMillis() > deadline)
                    throw new IllegalStateException(topic + " not ready after " + timeoutS + " s");
                Thread.sleep(200);
            }
        }
        System.out.printf(Locale.ROOT, "ready seconds=%.3f%n", (System.nanoTime() - start) / 1e9);
    }
}
