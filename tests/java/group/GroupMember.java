// One member of a consumer group for the end-to-end tests (tests/test_java_groups.py).
// Usage: java -cp <kafka-clients jars>:<dir> GroupMember <bootstrap> <group> <topic>
//            <classic|consumer> <stop-file> <pause-ms-per-poll>
// Subscribes, polls, prints every record it got ("R <partition> <offset>"), then commits
// synchronously ("K" once the commit succeeded, "F <records>" if it failed); prints
// "A <partitions>" whenever its assignment changes and "E <error>" on a fatal error.
// Stops cleanly (leaving the group) once <stop-file> exists. Output is flushed before
// every commit, so the records after the last "K" are exactly the uncommitted ones.
import java.io.BufferedOutputStream;
import java.io.PrintStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.time.Duration;
import java.util.*;
import org.apache.kafka.clients.consumer.*;
import org.apache.kafka.common.KafkaException;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

public class GroupMember {
    public static void main(String[] a) throws Exception {
        String bootstrap = a[0], group = a[1], topic = a[2], protocol = a[3];
        Path stop = Paths.get(a[4]);
        long pauseMs = Long.parseLong(a[5]);
        Properties p = new Properties();
        p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ConsumerConfig.GROUP_ID_CONFIG, group);
        p.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        p.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        p.put(ConsumerConfig.MAX_POLL_RECORDS_CONFIG, "500");
        p.put(ConsumerConfig.CLIENT_ID_CONFIG, "java-member-" + ProcessHandle.current().pid());
        p.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        p.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        p.put(ConsumerConfig.GROUP_PROTOCOL_CONFIG, protocol);
        if (protocol.equals("classic")) {
            p.put(ConsumerConfig.SESSION_TIMEOUT_MS_CONFIG, "10000");
            p.put(ConsumerConfig.HEARTBEAT_INTERVAL_MS_CONFIG, "1000");
            p.put(ConsumerConfig.PARTITION_ASSIGNMENT_STRATEGY_CONFIG,
                  CooperativeStickyAssignor.class.getName());
        }
        PrintStream out = new PrintStream(new BufferedOutputStream(System.out, 1 << 16), false);
        Set<Integer> owned = new TreeSet<>();
        try (KafkaConsumer<byte[], byte[]> c = new KafkaConsumer<>(p)) {
            c.subscribe(List.of(topic), new ConsumerRebalanceListener() {
                public void onPartitionsRevoked(Collection<TopicPartition> parts) {
                    parts.forEach(tp -> owned.remove(tp.partition()));
                    out.println("A " + owned);
                    out.flush();
                }
                public void onPartitionsAssigned(Collection<TopicPartition> parts) {
                    parts.forEach(tp -> owned.add(tp.partition()));
                    out.println("A " + owned);
                    out.flush();
                }
            });
            while (!Files.exists(stop)) {
                ConsumerRecords<byte[], byte[]> recs = c.poll(Duration.ofMillis(200));
                if (recs.isEmpty()) continue;
                for (ConsumerRecord<byte[], byte[]> r : recs) {
                    out.println("R " + r.partition() + " " + r.offset());
                }
                out.flush();
                try {
                    c.commitSync(Duration.ofSeconds(30));
                    out.println("K");
                } catch (KafkaException e) {
                    // CommitFailedException (a rebalance took the partitions), a
                    // stale or unknown member, or retriable failures that outlived
                    // the timeout (e.g. a coordinator move).
                    out.println("F " + recs.count());
                }
                out.flush();
                if (pauseMs > 0) Thread.sleep(pauseMs);
            }
        } catch (Exception e) {
            out.println("E " + e);
            out.flush();
            System.exit(1);
        }
        out.flush();
    }
}
