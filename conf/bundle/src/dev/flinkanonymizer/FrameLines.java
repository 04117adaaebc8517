package dev.flinkanonymizer;

import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.BoundedOneInput;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;

/**
 * Numbers the lines of a text input and joins runs of them into one frame, {@code "<number of the first>\n<line>\n<line>..."},
 * so the Python operator after it is called once per frame instead of once per line, and no line crosses into Python
 * as a tuple. A line never holds a {@code \n}: the text line reader splits at it.
 *
 * <p>It runs at parallelism 1, where the lines come in reading order, so the numbers are the lines' positions in the
 * input. Like {@link BundleByKey} it holds no state: what it holds goes out before a checkpoint barrier, before a
 * watermark, at the end of input, at {@code maxRecords} lines, and {@code maxDelayMs} after the first line it held
 * (no timer when {@code maxDelayMs <= 0}, for BATCH mode, whose bounded input always ends).
 */
public final class FrameLines extends AbstractStreamOperator<String>
        implements OneInputStreamOperator<String, String>, BoundedOneInput {
    private static final long serialVersionUID = 1L;

    private final int maxRecords;
    private final long maxDelayMs;

    private transient StringBuilder frame;
    private transient long next;
    private transient int held;
    private transient boolean timerSet;

    public FrameLines(int maxRecords, long maxDelayMs) {
        this.maxRecords = maxRecords;
        this.maxDelayMs = maxDelayMs;
    }

    @Override
    public void open() throws Exception {
        super.open();
        frame = new StringBuilder();
        next = 1;
    }

    @Override
    public void processElement(StreamRecord<String> element) {
        if (held == 0) {
            frame.append(next);
        }
        frame.append('\n').append(element.getValue());
        next++;
        if (++held >= maxRecords) {
            flush();
        } else if (!timerSet && maxDelayMs > 0) {
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
        output.collect(new StreamRecord<>(frame.toString()));
        frame.setLength(0);
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
