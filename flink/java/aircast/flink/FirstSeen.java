package aircast.flink;

import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.java.functions.KeySelector;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;
import org.apache.flink.util.OutputTag;

/**
 * The job's dedupe: the first sighting of a reading (its key and event time) goes on, a
 * sighting again within {@code retentionMs} of the last one leaves through
 * {@link #repeats()} (the job letters it {@code duplicate}).
 *
 * <p>Keyed by the reading key ("sensor:measure", field 1 of the split's rows), one state
 * entry per series: the event times seen and when each was last seen, in that order. It
 * replaced a Flink SQL count over (key, event time) with a state TTL: one state entry and
 * TTL bookkeeping per reading made that operator about a quarter of the job's time
 * (bench-flink: 28-29k readings/s with it, 36-42k without). Expired times are dropped when the series is next read, and a
 * processing-time timer per series (one pending at a time, at the oldest entry's expiry)
 * drops them from a series that went quiet, so the state of a sensor that stopped is
 * freed too.
 *
 * <p>A series holds the times of its last {@code retentionMs} (2 hours: ~48 for a sensor
 * sending every 150 s); the membership test is a scan of them, newest first.
 */
public final class FirstSeen extends KeyedProcessFunction<String, Row, Row> {
    private static final long serialVersionUID = 1L;

    /** The reading key of a split row: the series it belongs to. */
    public static final class ByReadingKey implements KeySelector<Row, String> {
        private static final long serialVersionUID = 1L;

        @Override
        public String getKey(Row row) {
            return (String) row.getField(1);
        }
    }

    private final long retentionMs;
    private final OutputTag<Row> repeats;
    // [pairs in use, time, last seen, time, last seen, ...], oldest sighting first; room
    // to spare so that a sighting is appended in place (heap state hands out a copy
    // while a checkpoint holds the original, so changing it in place is safe).
    private transient ValueState<long[]> seen;

    /** @param rowType the split's row type: the repeats' side output carries the rows. */
    public FirstSeen(long retentionMs, TypeInformation<Row> rowType) {
        if (retentionMs <= 0) {
            throw new IllegalArgumentException("retentionMs must be positive: " + retentionMs);
        }
        this.retentionMs = retentionMs;
        this.repeats = new OutputTag<>("repeats", rowType);
    }

    /** Rows seen again within the retention. */
    public OutputTag<Row> repeats() {
        return repeats;
    }

    @Override
    public void open(OpenContext context) {
        seen =
                getRuntimeContext()
                        .getState(
                                new ValueStateDescriptor<>(
                                        "seen", PrimitiveArrayTypeInfo.LONG_PRIMITIVE_ARRAY_TYPE_INFO));
    }

    @Override
    public void processElement(Row row, Context ctx, Collector<Row> out) throws Exception {
        long time = (Long) row.getField(0);
        long now = ctx.timerService().currentProcessingTime();
        long[] s = seen.value();
        if (s == null) {
            // A new series, or one whose times all expired: its one pending timer.
            ctx.timerService().registerProcessingTimeTimer(now + retentionMs);
            s = new long[1 + 2 * 4];
        } else {
            s = dropExpired(s, now);
        }
        int n = (int) s[0];
        int at = -1;
        for (int i = n - 1; i >= 0; i--) {
            if (s[1 + 2 * i] == time) {
                at = i;
                break;
            }
        }
        if (at >= 0) {
            // Seen again: it moves to the end, last seen now (its retention starts again,
            // as a TTL refreshed on access would).
            System.arraycopy(s, 1 + 2 * (at + 1), s, 1 + 2 * at, 2 * (n - at - 1));
            n -= 1;
        } else if (1 + 2 * (n + 1) > s.length) {
            long[] grown = new long[1 + 4 * (n + 1)];
            System.arraycopy(s, 0, grown, 0, 1 + 2 * n);
            s = grown;
        }
        s[1 + 2 * n] = time;
        s[2 + 2 * n] = now;
        s[0] = n + 1;
        seen.update(s);
        if (at >= 0) {
            ctx.output(repeats, row);
        } else {
            out.collect(row);
        }
    }

    @Override
    public void onTimer(long timestamp, OnTimerContext ctx, Collector<Row> out) throws Exception {
        long[] s = seen.value();
        if (s == null) {
            return;
        }
        long now = ctx.timerService().currentProcessingTime();
        s = dropExpired(s, now);
        if (s[0] == 0) {
            seen.clear();
            return;
        }
        seen.update(s);
        // The next entry to expire is the oldest sighting left.
        ctx.timerService().registerProcessingTimeTimer(s[2] + retentionMs);
    }

    /** The entries last seen less than the retention ago (the older ones are a prefix). */
    private long[] dropExpired(long[] s, long now) {
        int n = (int) s[0];
        int expired = 0;
        while (expired < n && s[2 + 2 * expired] + retentionMs <= now) {
            expired++;
        }
        if (expired > 0) {
            System.arraycopy(s, 1 + 2 * expired, s, 1, 2 * (n - expired));
            s[0] = n - expired;
        }
        return s;
    }
}
