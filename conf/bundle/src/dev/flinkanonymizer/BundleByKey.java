package dev.flinkanonymizer;

import java.util.LinkedHashMap;
import java.util.Map;

import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.BoundedOneInput;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.types.Row;

/**
 * Joins the payloads of {@code Row(key, payload)} records that share a key into one {@code Row(key, bundle)}, so a
 * keyed Python stage is called once per bundle instead of once per record (thread mode calls Python per element
 * and has no bundles of its own).
 *
 * <p>It holds no state: everything it holds goes out before a checkpoint barrier
 * ({@link #prepareSnapshotPreBarrier}), before a watermark (so no record falls behind a watermark it came before),
 * at the end of input, when {@code maxRecords} are held, and {@code maxDelayMs} after the first record it held.
 * Records of one key keep their order; the payloads are joined by {@code separator}, which they must not contain.
 * It knows nothing of what the payloads mean.
 */
public final class BundleByKey extends AbstractStreamOperator<Row>
        implements OneInputStreamOperator<Row, Row>, BoundedOneInput {
    private static final long serialVersionUID = 1L;

    private final int maxRecords;
    private final long maxDelayMs;
    private final String separator;

    private transient Map<Object, StringBuilder> bundles;
    private transient int held;
    private transient boolean timerSet;

    public BundleByKey(int maxRecords, long maxDelayMs, String separator) {
        this.maxRecords = maxRecords;
        this.maxDelayMs = maxDelayMs;
        this.separator = separator;
    }

    @Override
    public void open() throws Exception {
        super.open();
        bundles = new LinkedHashMap<>();
    }

    @Override
    public void processElement(StreamRecord<Row> element) {
        Row row = element.getValue();
        Object key = row.getField(0);
        String payload = (String) row.getField(1);
        StringBuilder bundle = bundles.get(key);
        if (bundle == null) {
            bundles.put(key, new StringBuilder(payload));
        } else {
            bundle.append(separator).append(payload);
        }
        if (++held >= maxRecords) {
            flush();
        } else if (!timerSet) {
            timerSet = true;
            long at = getProcessingTimeService().getCurrentProcessingTime() + maxDelayMs;
            getProcessingTimeService().registerTimer(at, time -> {
                timerSet = false;
                flush();
            });
        }
    }

    private void flush() {
        if (held == 0) {
            return;
        }
        for (Map.Entry<Object, StringBuilder> entry : bundles.entrySet()) {
            output.collect(new StreamRecord<>(Row.of(entry.getKey(), entry.getValue().toString())));
        }
        bundles.clear();
        held = 0;
    }

    @Override
    public void processWatermark(Watermark mark) throws Exception {
        flush();
        super.processWatermark(mark);
    }

    @Override
    public void prepareSnapshotPreBarrier(long checkpointId) throws Exception {
        flush();
        super.prepareSnapshotPreBarrier(checkpointId);
    }

    @Override
    public void endInput() {
        flush();
    }
}
