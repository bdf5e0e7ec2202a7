// Reads every partition of a topic from offset 0 to its end offset (taken at start)
// with assign() (no consumer group) and prints records, bytes and elapsed time.
// Usage: java -cp <kafka-clients jars>:<dir> BenchConsumer <bootstrap> <topic> [timeout-seconds]
// Output (one line on stdout): "records=N bytes=B seconds=S mib_per_sec=M records_per_sec=R"
import java.time.Duration;
import java.util.*;
import org.apache.kafka.clients.consumer.*;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

public class BenchConsumer {
    public static void main(String[] args) throws Exception {
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
}
