// Transactional workload for scripts/bench.sh (the "txn" figure).
//
// Usage: java -cp <kafka-clients jars>:<dir> TxnBench produce <bootstrap> <topic> <transactions>
//            <records-per-transaction> <record-size> <transactional-id> [timeout-s]
//        java -cp <kafka-clients jars>:<dir> TxnBench consume <bootstrap> <topic> <expected-records>
//            [timeout-s]
//
// produce  one transactional KafkaProducer (acks=all, linger.ms=5, idempotence on as transactions
//          require; every other setting the client's default), initTransactions, then <transactions>
//          transactions of <records-per-transaction> records of <record-size> bytes (null key, a
//          fixed random value), record i of the run to partition i mod <partitions>, so every
//          transaction of 100 records writes to every partition of a 3-partition topic;
//          commitTransaction after each. Throughput is over the whole run (first beginTransaction
//          to the end of the last commitTransaction; initTransactions is timed separately). The
//          commit latency is the duration of each commitTransaction() call: it flushes the
//          transaction's records still in the accumulator (linger.ms), waits for their acks, then
//          sends EndTxn and waits for it (the coordinator writes the markers). Any send or commit
//          error ends the program with a non-zero exit code.
//          Output (one line on stdout):
//            "txns=T records=N bytes=B seconds=S records_per_sec=R mib_per_sec=M txns_per_sec=X
//             init_ms=I commit_p50_ms=A commit_p99_ms=B commit_p999_ms=C commit_mean_ms=D
//             commit_max_ms=E transaction_version=V"
//          (transaction_version: the broker's finalized transaction.version feature, 0 if none,
//          -1 if it could not be read).
// consume  a KafkaConsumer with isolation.level=read_committed, no group: assign() every partition,
//          seekToBeginning, read until every partition's position reaches its end offset taken at
//          start (for read_committed: the last stable offset) and at least <expected-records> were
//          read. If the end offsets are reached with fewer records, it re-reads them for up to 30 s
//          (a lagging last stable offset) and then stops. Counts what it read; the caller compares
//          with the expected count (more means aborted or duplicate records, fewer lost ones). Output (one line on stdout):
//            "records=N bytes=B seconds=S mib_per_sec=M records_per_sec=R expected=E end=O"
//          (end: the sum of the end offsets, which includes one marker per transaction and partition).
import java.time.Duration;
import java.util.*;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.FeatureMetadata;
import org.apache.kafka.clients.admin.FinalizedVersionRange;
import org.apache.kafka.clients.consumer.*;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public class TxnBench {
    public static void main(String[] a) throws Exception {
        if (a.length >= 7 && a[0].equals("produce")) {
            produce(a[1], a[2], Integer.parseInt(a[3]), Integer.parseInt(a[4]), Integer.parseInt(a[5]), a[6],
                a.length > 7 ? Long.parseLong(a[7]) : 900);
        } else if (a.length >= 4 && a[0].equals("consume")) {
            consume(a[1], a[2], Long.parseLong(a[3]), a.length > 4 ? Long.parseLong(a[4]) : 600);
        } else {
            System.err.println("usage: TxnBench produce <bootstrap> <topic> <transactions> <records-per-txn> "
                + "<record-size> <transactional-id> [timeout-s] | consume <bootstrap> <topic> <expected> [timeout-s]");
            System.exit(2);
        }
    }

    static double ms(long nanos) { return nanos / 1e6; }

    /** The q-quantile (nearest rank) of sorted values. */
    static long quantile(long[] sorted, double q) {
        int i = (int) Math.ceil(q * sorted.length) - 1;
        return sorted[Math.max(0, Math.min(sorted.length - 1, i))];
    }

    static int transactionVersion(String bootstrap) {
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(AdminClientConfig.CLIENT_ID_CONFIG, "oxbow-bench-txn-features");
        try (Admin admin = Admin.create(p)) {
            FeatureMetadata f = admin.describeFeatures().featureMetadata().get(30, TimeUnit.SECONDS);
            FinalizedVersionRange r = f.finalizedFeatures().get("transaction.version");
            return r == null ? 0 : r.maxVersionLevel();
        } catch (Exception e) {
            System.err.println("describeFeatures failed: " + e);
            return -1;
        }
    }

    static void produce(String bootstrap, String topic, int txns, int perTxn, int size, String txnId, long timeoutS)
            throws Exception {
        int tv = transactionVersion(bootstrap);
        Properties p = new Properties();
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ProducerConfig.ACKS_CONFIG, "all");
        p.put(ProducerConfig.LINGER_MS_CONFIG, "5");
        p.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
        p.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, txnId);
        p.put(ProducerConfig.CLIENT_ID_CONFIG, "oxbow-bench-txn-producer");
        p.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, "120000");
        byte[] value = new byte[size];
        new Random(42).nextBytes(value);
        long[] commits = new long[txns];
        long deadline = System.currentTimeMillis() + timeoutS * 1000;
        try (KafkaProducer<byte[], byte[]> prod =
                 new KafkaProducer<>(p, new ByteArraySerializer(), new ByteArraySerializer())) {
            List<PartitionInfo> infos = prod.partitionsFor(topic);
            int parts = infos.size();
            if (parts == 0) throw new IllegalStateException("no partitions for " + topic);
            long t0 = System.nanoTime();
            prod.initTransactions();
            long t1 = System.nanoTime();
            long seq = 0;
            for (int t = 0; t < txns; t++) {
                if (System.currentTimeMillis() > deadline)
                    throw new IllegalStateException("timed out after " + t + " of " + txns + " transactions");
                prod.beginTransaction();
                for (int i = 0; i < perTxn; i++, seq++)
                    prod.send(new ProducerRecord<>(topic, (int) (seq % parts), null, value));
                long c0 = System.nanoTime();
                prod.commitTransaction();
                commits[t] = System.nanoTime() - c0;
            }
            long t2 = System.nanoTime();
            double s = (t2 - t1) / 1e9;
            long records = (long) txns * perTxn, bytes = records * size;
            long sum = 0;
            for (long c : commits) sum += c;
            long[] sorted = commits.clone();
            Arrays.sort(sorted);
            System.out.printf(Locale.ROOT,
                "txns=%d records=%d bytes=%d seconds=%.3f records_per_sec=%.1f mib_per_sec=%.3f txns_per_sec=%.2f "
                + "init_ms=%.1f commit_p50_ms=%.3f commit_p99_ms=%.3f commit_p999_ms=%.3f commit_mean_ms=%.3f "
                + "commit_max_ms=%.3f transaction_version=%d%n",
                txns, records, bytes, s, records / s, bytes / s / (1024.0 * 1024.0), txns / s, ms(t1 - t0),
                ms(quantile(sorted, 0.50)), ms(quantile(sorted, 0.99)), ms(quantile(sorted, 0.999)),
                ms(sum / Math.max(1, txns)), ms(sorted.length > 0 ? sorted[sorted.length - 1] : 0), tv);
            System.out.flush();
        }
    }

    static void consume(String bootstrap, String topic, long expected, long timeoutS) throws Exception {
        Properties p = new Properties();
        p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
        p.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        p.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        p.put(ConsumerConfig.MAX_POLL_RECORDS_CONFIG, "10000");
        p.put(ConsumerConfig.CLIENT_ID_CONFIG, "oxbow-bench-txn-consumer");
        try (KafkaConsumer<byte[], byte[]> c =
                 new KafkaConsumer<>(p, new ByteArrayDeserializer(), new ByteArrayDeserializer())) {
            List<PartitionInfo> infos = c.partitionsFor(topic, Duration.ofSeconds(60));
            if (infos == null || infos.isEmpty()) throw new IllegalStateException("no partitions for " + topic);
            List<TopicPartition> tps = new ArrayList<>();
            for (PartitionInfo i : infos) tps.add(new TopicPartition(topic, i.partition()));
            c.assign(tps);
            c.seekToBeginning(tps);
            Map<TopicPartition, Long> end = c.endOffsets(tps, Duration.ofSeconds(60)); // LSO (read_committed)
            long endSum = 0;
            for (long e : end.values()) endSum += e;
            Map<TopicPartition, Long> perPartition = new HashMap<>();
            long records = 0, bytes = 0;
            long start = System.nanoTime();
            long deadline = System.currentTimeMillis() + timeoutS * 1000;
            long shortSince = 0; // when the end offsets were first reached with fewer records than expected
            while (true) {
                boolean atEnd = true;
                for (TopicPartition tp : tps) atEnd &= c.position(tp) >= end.get(tp);
                if (atEnd && records >= expected) break;
                if (atEnd) {
                    // Short at the end offsets: give a lagging last stable offset up to 30 s to move on.
                    long now = System.currentTimeMillis();
                    if (shortSince == 0) shortSince = now;
                    if (now - shortSince > 30_000 || now > deadline) break;
                    end = c.endOffsets(tps, Duration.ofSeconds(60));
                    endSum = 0;
                    for (long e : end.values()) endSum += e;
                } else if (System.currentTimeMillis() > deadline) {
                    throw new IllegalStateException("timed out: " + records + " of " + expected + " records read");
                }
                ConsumerRecords<byte[], byte[]> rs = c.poll(Duration.ofMillis(500));
                for (ConsumerRecord<byte[], byte[]> r : rs) {
                    records++;
                    bytes += Math.max(0, r.serializedKeySize()) + Math.max(0, r.serializedValueSize());
                    perPartition.merge(new TopicPartition(r.topic(), r.partition()), 1L, Long::sum);
                }
            }
            double s = (System.nanoTime() - start) / 1e9;
            for (TopicPartition tp : tps)
                System.err.printf(Locale.ROOT, "partition %d: %d records, end offset %d, position %d%n",
                    tp.partition(), perPartition.getOrDefault(tp, 0L), end.get(tp), c.position(tp));
            System.out.printf(Locale.ROOT,
                "records=%d bytes=%d seconds=%.3f mib_per_sec=%.3f records_per_sec=%.1f expected=%d end=%d%n",
                records, bytes, s, bytes / s / (1024.0 * 1024.0), records / s, expected, endSum);
        }
    }
}
