// An exactly-once read-process-write loop for the end-to-end tests (tests/test_transactions.py).
// Usage: java -cp <kafka-clients jars>:<dir> TxnCopier <bootstrap> <input topic> <output topic>
//            <group> <transactional.id> <abort-every> <max-poll-records> <stop-file>
// A read_committed consumer (group <group>, no auto commit) and a transactional producer
// copy every input record to the same partition of <output topic>, key and value unchanged,
// one transaction per poll, the consumed offsets committed in the transaction
// (sendOffsetsToTransaction with consumer.groupMetadata(): the positions after the poll,
// of every assigned partition). Every <abort-every>-th
// transaction is flushed (so its records are in the log) and then aborted on purpose, and
// the consumer rewound to the group's committed offsets, which must be those of the last
// commit. Abortable errors abort the transaction and rewind the same way.
// Exits 0 once it owns every input partition and its positions reach the input's end
// (read_committed end offsets), or once <stop-file> exists.
// Output, one line each, flushed as written:
//   S <transactional.id>             initTransactions done
//   G <partitions>                   assignment changed
//   C <txn> <records> <p>=<o>,...    transaction committed, with the offsets it committed
//   A <txn> <records>                transaction aborted on purpose
//   B <txn> <records> <error>        transaction aborted after an abortable error
//   X <message>                      broken invariant (committed offsets after an abort)
//   D <records committed>            done: every input partition consumed to its end
//   E <error>                        fatal error (exit code 2)
import java.io.BufferedOutputStream;
import java.io.PrintStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.time.Duration;
import java.util.*;
import org.apache.kafka.clients.consumer.*;
import org.apache.kafka.clients.producer.*;
import org.apache.kafka.common.KafkaException;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.*;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public class TxnCopier {
    static PrintStream out = new PrintStream(new BufferedOutputStream(System.out, 1 << 16), false);

    static void say(String line) {
        out.println(line);
        out.flush();
    }

    public static void main(String[] a) throws Exception {
        String bootstrap = a[0], input = a[1], output = a[2], group = a[3], txnId = a[4];
        int abortEvery = Integer.parseInt(a[5]);
        int maxPoll = Integer.parseInt(a[6]);
        Path stop = Paths.get(a[7]);

        Properties cp = new Properties();
        cp.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        cp.put(ConsumerConfig.GROUP_ID_CONFIG, group);
        cp.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
        cp.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        cp.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        cp.put(ConsumerConfig.MAX_POLL_RECORDS_CONFIG, Integer.toString(maxPoll));
        cp.put(ConsumerConfig.GROUP_PROTOCOL_CONFIG, "classic");
        cp.put(ConsumerConfig.SESSION_TIMEOUT_MS_CONFIG, "10000");
        cp.put(ConsumerConfig.HEARTBEAT_INTERVAL_MS_CONFIG, "1000");
        cp.put(ConsumerConfig.CLIENT_ID_CONFIG, "txn-copier-consumer-" + ProcessHandle.current().pid());
        cp.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        cp.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());

        Properties pp = new Properties();
        pp.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        pp.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, txnId);
        pp.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
        pp.put(ProducerConfig.ACKS_CONFIG, "all");
        pp.put(ProducerConfig.LINGER_MS_CONFIG, "5");
        pp.put(ProducerConfig.TRANSACTION_TIMEOUT_CONFIG, "60000");
        pp.put(ProducerConfig.CLIENT_ID_CONFIG, "txn-copier-producer-" + ProcessHandle.current().pid());
        pp.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        pp.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());

        long txn = 0, committedRecords = 0;
        try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(cp);
             KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(pp)) {
            producer.initTransactions();
            say("S " + txnId);
            int partitions = consumer.partitionsFor(input, Duration.ofSeconds(60)).size();
            consumer.subscribe(List.of(input), new ConsumerRebalanceListener() {
                public void onPartitionsRevoked(Collection<TopicPartition> parts) {}
                public void onPartitionsAssigned(Collection<TopicPartition> parts) {
                    say("G " + consumer.assignment());
                }
            });
            while (!Files.exists(stop)) {
                ConsumerRecords<byte[], byte[]> recs = consumer.poll(Duration.ofMillis(200));
                if (recs.isEmpty()) {
                    if (done(consumer, partitions)) {
                        say("D " + committedRecords);
                        return;
                    }
                    continue;
                }
                txn++;
                // The offsets to commit: the positions after this poll (past any aborted
                // records and markers read_committed skipped), for every assigned partition.
                Map<TopicPartition, OffsetAndMetadata> offsets = new HashMap<>();
                for (TopicPartition tp : consumer.assignment()) {
                    offsets.put(tp, new OffsetAndMetadata(consumer.position(tp, Duration.ofSeconds(60))));
                }
                boolean abortOnPurpose = abortEvery > 0 && txn % abortEvery == 0;
                boolean committed = false;
                String abortable = null;
                try {
                    producer.beginTransaction();
                    for (ConsumerRecord<byte[], byte[]> r : recs) {
                        producer.send(new ProducerRecord<>(output, r.partition(), r.key(), r.value()));
                    }
                    producer.sendOffsetsToTransaction(offsets, consumer.groupMetadata());
                    if (abortOnPurpose) {
                        producer.flush();  // the aborted records are in the log, for read_committed to skip
                        producer.abortTransaction();
                    } else {
                        commit(producer);
                        committed = true;
                    }
                } catch (ProducerFencedException | OutOfOrderSequenceException | AuthorizationException
                         | UnsupportedVersionException | FencedInstanceIdException e) {
                    throw e;  // fatal: this producer cannot go on
                } catch (KafkaException e) {
                    abortable = e.toString().replace('\n', ' ');
                    producer.abortTransaction();
                }
                if (committed) {
                    committedRecords += recs.count();
                    StringBuilder sb = new StringBuilder();
                    for (Map.Entry<Integer, OffsetAndMetadata> e : new TreeMap<>(byPartition(offsets)).entrySet()) {
                        if (sb.length() > 0) sb.append(',');
                        sb.append(e.getKey()).append('=').append(e.getValue().offset());
                    }
                    say("C " + txn + " " + recs.count() + " " + sb);
                    offsets.forEach((tp, om) -> lastCommitted.put(tp, om.offset()));
                } else if (abortable == null) {
                    say("A " + txn + " " + recs.count());
                    rewind(consumer, lastCommitted);
                } else {
                    say("B " + txn + " " + recs.count() + " " + abortable);
                    rewind(consumer, null);
                }
            }
        } catch (Exception e) {
            say("E " + e.toString().replace('\n', ' '));
            out.flush();
            System.exit(2);
        }
    }

    static Map<Integer, OffsetAndMetadata> byPartition(Map<TopicPartition, OffsetAndMetadata> m) {
        Map<Integer, OffsetAndMetadata> r = new HashMap<>();
        m.forEach((tp, om) -> r.put(tp.partition(), om));
        return r;
    }

    /** Commits; a TimeoutException leaves the outcome unknown, and the commit may be retried. */
    static void commit(KafkaProducer<byte[], byte[]> producer) {
        for (int attempt = 1; ; attempt++) {
            try {
                producer.commitTransaction();
                return;
            } catch (TimeoutException e) {
                if (attempt >= 5) throw e;
                say("T commit timed out, retrying: " + e.getMessage());
            }
        }
    }

    /** The offsets of the last commit this copier knows of (sent in a committed transaction or
     *  read back by a rewind): an abort must leave the group's committed offsets there. (The
     *  consumer's position at a transaction's start can be past them, over markers.) */
    static final Map<TopicPartition, Long> lastCommitted = new HashMap<>();

    /** Seeks every assigned partition to the group's committed offset; with `expected` (the
     *  offsets of the last commit), reports any committed offset that moved. */
    static void rewind(KafkaConsumer<byte[], byte[]> consumer, Map<TopicPartition, Long> expected) {
        Set<TopicPartition> assigned = consumer.assignment();
        Map<TopicPartition, OffsetAndMetadata> committed = consumer.committed(assigned, Duration.ofSeconds(60));
        for (TopicPartition tp : assigned) {
            OffsetAndMetadata om = committed.get(tp);
            if (expected != null && expected.containsKey(tp)) {
                long want = expected.get(tp);
                if (om == null ? want != 0 : om.offset() != want) {
                    say("X " + tp + ": committed offset " + (om == null ? "none" : Long.toString(om.offset()))
                        + " after an aborted transaction; the last commit was " + want);
                }
            }
            if (om != null) {
                lastCommitted.put(tp, om.offset());
            }
            if (om == null) {
                consumer.seekToBeginning(List.of(tp));
            } else {
                consumer.seek(tp, om.offset());
            }
        }
    }

    /** Every input partition is ours and consumed up to its (read_committed) end. */
    static boolean done(KafkaConsumer<byte[], byte[]> consumer, int partitions) {
        Set<TopicPartition> assigned = consumer.assignment();
        if (assigned.size() != partitions) return false;
        Map<TopicPartition, Long> ends = consumer.endOffsets(assigned, Duration.ofSeconds(30));
        for (TopicPartition tp : assigned) {
            if (consumer.position(tp, Duration.ofSeconds(30)) < ends.get(tp)) return false;
        }
        return true;
    }
}
