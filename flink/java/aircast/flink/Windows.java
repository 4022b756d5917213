package aircast.flink;

import java.util.ArrayList;
import java.util.List;

import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.MapState;
import org.apache.flink.api.common.state.MapStateDescriptor;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;

/**
 * The job's aggregates: per reading key, tumbling event-time windows of {@code sizeMs}
 * (mean, min, max, count of the values; the sensor and its place from the window's
 * latest reading), each emitted once, final, when the watermark passes its last
 * millisecond, as {@code (key, Aggregate JSON)}. A reading for a window that has fired is
 * left out (the job letters it {@code late}, in SQL, by the same rule).
 *
 * <p>It runs chained after {@link FirstSeen} on the same keys (no shuffle). It replaced
 * a Flink SQL window aggregate, whose operator and the hand-over of every reading to it
 * were over a third of the job's time (bench-flink: 35-37k readings/s with it, 52-58k
 * without).
 *
 * <p>The JSON's shape comes from aircast.records (flink/transforms.py passes it): the
 * reading's JSON up to {@code marker} (its first field an Aggregate does not share), then
 * the figures named in {@code figures}, in that order. A figure this class does not know
 * stops the job at construction.
 */
public final class Windows extends KeyedProcessFunction<String, Row, Row> {
    private static final long serialVersionUID = 1L;

    private static final int COUNT = 0;
    private static final int SUM = 1;
    private static final int MIN = 2;
    private static final int MAX = 3;
    private static final List<String> KNOWN =
            List.of("window_start", "window_end", "mean", "min", "max", "count");

    private final long sizeMs;
    private final String marker;
    private final String[] figures;
    // Per open window (its start, ms): count, sum, min, max; and its latest reading.
    private transient MapState<Long, double[]> figuresOf;
    private transient MapState<Long, String> latestOf;

    /**
     * @param marker the reading JSON's text that ends the part an aggregate takes
     * @param figures the aggregate's other fields, in order, space-separated
     */
    public Windows(long sizeMs, String marker, String figures) {
        if (sizeMs <= 0) {
            throw new IllegalArgumentException("sizeMs must be positive: " + sizeMs);
        }
        this.sizeMs = sizeMs;
        this.marker = marker;
        List<String> names = new ArrayList<>();
        for (String name : figures.trim().split("\\s+")) {
            if (!KNOWN.contains(name)) {
                throw new IllegalArgumentException(
                        "no figure for Aggregate field " + name + " (known: " + KNOWN + ")");
            }
            names.add(name);
        }
        this.figures = names.toArray(new String[0]);
    }

    @Override
    public void open(OpenContext context) {
        figuresOf =
                getRuntimeContext()
                        .getMapState(
                                new MapStateDescriptor<>(
                                        "figures",
                                        Types.LONG,
                                        PrimitiveArrayTypeInfo.DOUBLE_PRIMITIVE_ARRAY_TYPE_INFO));
        latestOf =
                getRuntimeContext()
                        .getMapState(new MapStateDescriptor<>("latest", Types.LONG, Types.STRING));
    }

    @Override
    public void processElement(Row row, Context ctx, Collector<Row> out) throws Exception {
        long time = (Long) row.getField(0);
        long start = time - Math.floorMod(time, sizeMs);
        long last = start + sizeMs - 1;
        if (last <= ctx.timerService().currentWatermark()) {
            return; // its window has fired: late
        }
        double value = (Double) row.getField(3);
        double[] f = figuresOf.get(start);
        if (f == null) {
            f = new double[] {0, 0, value, value};
            ctx.timerService().registerEventTimeTimer(last);
        }
        f[COUNT] += 1;
        f[SUM] += value;
        f[MIN] = Math.min(f[MIN], value);
        f[MAX] = Math.max(f[MAX], value);
        figuresOf.put(start, f);
        latestOf.put(start, (String) row.getField(2));
    }

    @Override
    public void onTimer(long timestamp, OnTimerContext ctx, Collector<Row> out) throws Exception {
        long start = timestamp + 1 - sizeMs;
        double[] f = figuresOf.get(start);
        String latest = latestOf.get(start);
        figuresOf.remove(start);
        latestOf.remove(start);
        if (f == null || latest == null) {
            return;
        }
        int cut = latest.indexOf(marker);
        if (cut < 0) {
            throw new IllegalStateException("a reading without " + marker + ": " + latest);
        }
        StringBuilder json = new StringBuilder(cut + 160).append(latest, 0, cut);
        for (String name : figures) {
            json.append(",\"").append(name).append("\":");
            switch (name) {
                case "window_start":
                    json.append(start / 1000);
                    break;
                case "window_end":
                    json.append((start + sizeMs) / 1000);
                    break;
                case "mean":
                    json.append(f[SUM] / f[COUNT]);
                    break;
                case "min":
                    json.append(f[MIN]);
                    break;
                case "max":
                    json.append(f[MAX]);
                    break;
                default: // "count", the last of KNOWN
                    json.append((long) f[COUNT]);
            }
        }
        out.collect(Row.of(ctx.getCurrentKey(), json.append('}').toString()));
    }
}
