// Creates consumer groups by committing one offset each (Admin.alterConsumerGroupOffsets: an
// OffsetCommit with generation -1, as for a group that only commits), for scripts/bench.sh's
// coordinator-memory figure.
//
// Usage: java -cp <kafka-clients jars>:<dir> GroupOffsets warm   <bootstrap> <topic> [timeout-s]
//        java -cp <kafka-clients jars>:<dir> GroupOffsets create <bootstrap> <topic> <groups> <prefix> [timeout-s]
//   warm    commits for one group per __consumer_offsets partition (so that the topic exists and
//           every coordinator partition is open before the "before" measurement)
//   create  commits offset 0 of <topic>-0 for groups <prefix>0 .. <prefix><groups-1>, at most
//           IN_FLIGHT at a time, then counts the groups with that prefix (Admin.listGroups)
// Output (one line on stdout): "groups=<n> seconds=<s> failed=<f> listed=<n listed>"
import java.util.*;
import java.util.concurrent.*;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.kafka.clients.admin.*;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.common.TopicPartition;

public class GroupOffsets {
    static final int IN_FLIGHT = 200;

    public static void main(String[] a) throws Exception {
        String cmd = a[0], bootstrap = a[1], topic = a[2];
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(AdminClientConfig.CLIENT_ID_CONFIG, "oxbow-bench-groups");
        try (Admin admin = Admin.create(p)) {
            if (cmd.equals("warm")) {
                long timeoutS = a.length > 3 ? Long.parseLong(a[3]) : 300;
                List<String> groups = new ArrayList<>();
                commit(admin, topic, List.of("bench-warm"), timeoutS);
                int parts = admin.describeTopics(List.of("__consumer_offsets")).allTopicNames()
                    .get(timeoutS, TimeUnit.SECONDS).get("__consumer_offsets").partitions().size();
                boolean[] covered = new boolean[parts];
                for (int i = 0, left = parts; left > 0 && i < 1_000_000; i++) {
                    String g = "bench-warm-" + i;
                    int h = g.hashCode();
                    int part = (h == Integer.MIN_VALUE ? 0 : Math.abs(h)) % parts;
                    if (!covered[part]) { covered[part] = true; left--; groups.add(g); }
                }
                long[] r = commit(admin, topic, groups, timeoutS);
                System.out.printf(Locale.ROOT, "groups=%d seconds=%.3f failed=%d listed=-1%n", groups.size(), r[0] / 1e9, r[1]);
            } else if (cmd.equals("create")) {
                int n = Integer.parseInt(a[3]);
                String prefix = a[4];
                long timeoutS = a.length > 5 ? Long.parseLong(a[5]) : 600;
                List<String> groups = new ArrayList<>(n);
                for (int i = 0; i < n; i++) groups.add(prefix + i);
                long[] r = commit(admin, topic, groups, timeoutS);
                long listed = admin.listGroups().all().get(timeoutS, TimeUnit.SECONDS).stream()
                    .filter(g -> g.groupId().startsWith(prefix)).count();
                System.out.printf(Locale.ROOT, "groups=%d seconds=%.3f failed=%d listed=%d%n", n, r[0] / 1e9, r[1], listed);
            } else {
                throw new IllegalArgumentException(cmd);
            }
        }
    }

    /** Commits offset 0 of topic-0 for every group, IN_FLIGHT at a time; {nanos, failures}. */
    static long[] commit(Admin admin, String topic, List<String> groups, long timeoutS) throws Exception {
        Map<TopicPartition, OffsetAndMetadata> offsets = Map.of(new TopicPartition(topic, 0), new OffsetAndMetadata(0));
        Semaphore window = new Semaphore(IN_FLIGHT);
        AtomicLong failed = new AtomicLong();
        Map<String, Throwable> firstErrors = new ConcurrentHashMap<>();
        long start = System.nanoTime(), deadline = System.currentTimeMillis() + timeoutS * 1000;
        for (String g : groups) {
            if (!window.tryAcquire(Math.max(1, deadline - System.currentTimeMillis()), TimeUnit.MILLISECONDS))
                throw new TimeoutException("commits not done after " + timeoutS + " s");
            admin.alterConsumerGroupOffsets(g, offsets).all().whenComplete((v, e) -> {
                if (e != null) {
                    failed.incrementAndGet();
                    if (firstErrors.size() < 5) firstErrors.put(g, e);
                }
                window.release();
            });
        }
        if (!window.tryAcquire(IN_FLIGHT, Math.max(1, deadline - System.currentTimeMillis()), TimeUnit.MILLISECONDS))
            throw new TimeoutException("commits not done after " + timeoutS + " s");
        long nanos = System.nanoTime() - start;
        firstErrors.forEach((g, e) -> System.err.println("commit for " + g + " failed: " + e));
        return new long[] {nanos, failed.get()};
    }
}
