package aircast.flink;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.math.BigInteger;
import java.nio.charset.StandardCharsets;
import java.time.DateTimeException;
import java.time.LocalDateTime;
import java.time.ZoneOffset;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.Iterator;
import java.util.List;
import java.util.Locale;
import java.util.Map;

import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonParser;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.DeserializationFeature;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.flink.streaming.api.functions.ProcessFunction;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;
import org.apache.flink.util.OutputTag;

/**
 * The Flink job's fast lane: a raw-topic message that is a clean feed record becomes its
 * readings here, in the JVM; every other message leaves through {@link #SLOW} for the
 * Python split (aircast.records, the definition of what is valid and why not).
 *
 * <p>"Clean" is deliberately narrow: every check of the domain passes and every field the
 * reading carries is in a form whose Python reading is certain (ids plain integers, the
 * timestamp {@code YYYY-MM-DD HH:MM:SS}, coordinates and values plain decimals of at most
 * 15 significant digits, names plain strings, no backslash anywhere in the message). For
 * those, the row is the one {@code aircast.records.split_record_rows} makes, byte for byte:
 * (event ms, "sensor:measure", the Reading's JSON as orjson writes it, value). Anything
 * else, valid or not, takes the slow lane, so a rejection, its reason and its detail are
 * always the domain's. tests/test_flink_fast_split.py checks both claims against Python.
 *
 * <p>The measure table (name, low, high) comes from aircast.measures, as text, at
 * construction: it is defined once.
 */
public final class FastSplit extends ProcessFunction<String, Row> {
    private static final long serialVersionUID = 1L;

    /** Messages for the Python split. */
    public static final OutputTag<String> SLOW = new OutputTag<>("slow-lane", Types.STRING);

    // Significant digits a decimal may have and still print as orjson prints its double
    // (the shortest repr of a double is its decimal when that has at most 15 digits).
    private static final int MAX_DIGITS = 15;
    // orjson writes |x| below 1e-6 in exponent form; decimals from 1e-5 up are plain.
    private static final int MAX_LEADING_FRACTION_ZEROS = 4;
    private static final BigInteger INT64_LIMIT = BigInteger.ONE.shiftLeft(63);

    private final String measures;
    private transient Map<String, double[]> bounds;
    private transient ObjectMapper mapper;

    /** @param measures one measure a line: {@code name low high} (Python reprs). */
    public FastSplit(String measures) {
        this.measures = measures;
    }

    @Override
    public void processElement(String value, Context ctx, Collector<Row> out) {
        List<Row> rows = split(value);
        if (rows == null) {
            ctx.output(SLOW, value);
        } else {
            for (Row row : rows) {
                out.collect(row);
            }
        }
    }

    /** The readings of a clean record, or null: take the slow lane. */
    public List<Row> split(String text) {
        if (mapper == null) {
            init();
        }
        if (text == null || text.indexOf('\\') >= 0 || !text.startsWith("{")) {
            return null;
        }
        JsonNode root;
        try {
            root = mapper.readTree(text);
        } catch (IOException | RuntimeException e) {
            return null;
        }
        try {
            return readings(root);
        } catch (Unclean e) {
            return null;
        }
    }

    private void init() {
        Map<String, double[]> m = new HashMap<>();
        for (String line : measures.split("\n")) {
            String[] parts = line.trim().split(" ");
            if (parts.length == 3) {
                m.put(parts[0], new double[] {Double.parseDouble(parts[1]), Double.parseDouble(parts[2])});
            }
        }
        bounds = m;
        ObjectMapper om = new ObjectMapper();
        om.enable(DeserializationFeature.FAIL_ON_TRAILING_TOKENS);
        // Python's parser keeps the last of repeated keys; rather than rely on Jackson
        // doing the same, such a message is not clean.
        om.enable(JsonParser.Feature.STRICT_DUPLICATE_DETECTION);
        mapper = om;
    }

    /** Not a clean record: the slow lane decides. */
    private static final class Unclean extends Exception {
        private static final long serialVersionUID = 1L;
        static final Unclean INSTANCE = new Unclean();

        private Unclean() {
            super(null, null, false, false);
        }
    }

    private List<Row> readings(JsonNode root) throws Unclean {
        if (!root.isObject() || !numbersFinite(root, 0)) {
            throw Unclean.INSTANCE;
        }
        JsonNode location = object(root.get("location"));
        JsonNode sensor = object(root.get("sensor"));
        long timestamp = timestamp(root.get("timestamp"));
        String latText = decimal(location.get("latitude"));
        String lonText = decimal(location.get("longitude"));
        double latitude = Double.parseDouble(latText);
        double longitude = Double.parseDouble(lonText);
        if (!(latitude >= -90.0 && latitude <= 90.0 && longitude >= -180.0 && longitude <= 180.0)
                || (latitude == 0.0 && longitude == 0.0)) {
            throw Unclean.INSTANCE;
        }
        String sensorType = text(object(sensor.get("sensor_type")).get("name"));
        if (sensorType.isEmpty()) {
            throw Unclean.INSTANCE;
        }
        JsonNode values = root.get("sensordatavalues");
        if (values == null || !values.isArray() || values.size() == 0) {
            throw Unclean.INSTANCE;
        }
        long sensorId = integer(sensor.get("id"));
        long locationId = integer(location.get("id"));
        if (!notIndoor(location.get("indoor"))) {
            throw Unclean.INSTANCE;
        }
        String ownCountry = optionalText(location.get("country"));
        for (int i = 0; i < ownCountry.length(); i++) {
            if (ownCountry.charAt(i) > 127) { // str.upper() beyond ASCII: Python decides
                throw Unclean.INSTANCE;
            }
        }
        ownCountry = ownCountry.toUpperCase(Locale.ROOT);
        String city = "";
        String country = "";
        String placeCode = "";
        JsonNode place = root.get("place");
        if (place != null && !place.isNull()) {
            object(place);
            city = optionalText(place.get("city"));
            country = optionalText(place.get("country"));
            placeCode = optionalText(place.get("country_code"));
            // Not in the reading, but Python reads it too: only a string (or none) is clean.
            optionalText(place.get("region"));
        }
        String countryCode = placeCode.isEmpty() ? ownCountry : placeCode;
        String recordId = recordId(root.get("id"));

        StringBuilder prefix = new StringBuilder(256);
        prefix.append("{\"sensor_id\":").append(sensorId)
                .append(",\"sensor_type\":\"").append(sensorType)
                .append("\",\"location_id\":").append(locationId)
                .append(",\"latitude\":").append(latText)
                .append(",\"longitude\":").append(lonText)
                .append(",\"country_code\":\"").append(countryCode)
                .append("\",\"country\":\"").append(country)
                .append("\",\"city\":\"").append(city)
                .append("\",\"measure\":\"");
        String head = prefix.toString();
        String tail = ",\"timestamp\":" + timestamp + ",\"record_id\":" + recordId + "}";
        List<Row> rows = new ArrayList<>(values.size());
        for (JsonNode item : values) {
            if (!item.isObject()) {
                throw Unclean.INSTANCE;
            }
            String measure = text(item.get("value_type"));
            double[] range = bounds.get(measure);
            if (range == null) {
                throw Unclean.INSTANCE;
            }
            String valueText = decimal(item.get("value"));
            double value = Double.parseDouble(valueText);
            if (!(value >= range[0] && value <= range[1])) {
                throw Unclean.INSTANCE;
            }
            String json = head + measure + "\",\"value\":" + valueText + tail;
            rows.add(Row.of(timestamp * 1000L, sensorId + ":" + measure, json, value));
        }
        return rows;
    }

    /** No number Python's parser would refuse (it refuses what overflows a double). */
    private static boolean numbersFinite(JsonNode node, int depth) {
        if (depth > 64) {
            return false;
        }
        if (node.isNumber()) {
            if (node.isBigInteger()) {
                return Double.isFinite(node.bigIntegerValue().doubleValue());
            }
            return !node.isFloatingPointNumber() || Double.isFinite(node.doubleValue());
        }
        if (node.isContainerNode()) {
            for (Iterator<JsonNode> it = node.elements(); it.hasNext(); ) {
                if (!numbersFinite(it.next(), depth + 1)) {
                    return false;
                }
            }
        }
        return true;
    }

    private static JsonNode object(JsonNode node) throws Unclean {
        if (node == null || !node.isObject()) {
            throw Unclean.INSTANCE;
        }
        return node;
    }

    private static String text(JsonNode node) throws Unclean {
        if (node == null || !node.isTextual()) {
            throw Unclean.INSTANCE;
        }
        return node.textValue();
    }

    /** A string field that may be absent or null ("" then), as Python's ``str(x or "")``. */
    private static String optionalText(JsonNode node) throws Unclean {
        if (node == null || node.isNull()) {
            return "";
        }
        return text(node);
    }

    /** A plain integer (JSON integer within 64 bits, or its digits as a string). */
    private static long integer(JsonNode node) throws Unclean {
        if (node == null) {
            throw Unclean.INSTANCE;
        }
        if (node.isIntegralNumber() && node.canConvertToLong()) {
            return node.longValue();
        }
        if (node.isTextual()) {
            String s = node.textValue();
            int start = s.startsWith("-") ? 1 : 0;
            if (s.length() > start && s.length() - start <= 18 && digits(s, start, s.length())) {
                return Long.parseLong(s);
            }
        }
        throw Unclean.INSTANCE;
    }

    /** aircast.records._record_id: a non-negative integer within 64 bits, else null. */
    private static String recordId(JsonNode node) {
        if (node == null) {
            return "null";
        }
        String s;
        if (node.isIntegralNumber()) {
            s = node.asText();
        } else if (node.isTextual()) {
            s = node.textValue();
        } else {
            return "null";
        }
        if (s.isEmpty() || !digits(s, 0, s.length())) {
            return "null";
        }
        BigInteger v = new BigInteger(s);
        return v.compareTo(INT64_LIMIT) < 0 ? v.toString() : "null";
    }

    /** Indoor absent, null, 0, "0" or false: an outdoor sensor. */
    private static boolean notIndoor(JsonNode node) {
        if (node == null || node.isNull()) {
            return true;
        }
        if (node.isIntegralNumber()) {
            return node.canConvertToLong() && node.longValue() == 0;
        }
        if (node.isBoolean()) {
            return !node.booleanValue();
        }
        return node.isTextual() && node.textValue().equals("0");
    }

    /** ``YYYY-MM-DD HH:MM:SS`` (or with a T), UTC → epoch seconds. */
    private static long timestamp(JsonNode node) throws Unclean {
        String s = text(node);
        if (s.length() != 19
                || s.charAt(4) != '-' || s.charAt(7) != '-' || (s.charAt(10) != ' ' && s.charAt(10) != 'T')
                || s.charAt(13) != ':' || s.charAt(16) != ':'
                || !digits(s, 0, 4) || !digits(s, 5, 7) || !digits(s, 8, 10)
                || !digits(s, 11, 13) || !digits(s, 14, 16) || !digits(s, 17, 19)) {
            throw Unclean.INSTANCE;
        }
        int year = Integer.parseInt(s.substring(0, 4));
        if (year < 1) {
            throw Unclean.INSTANCE;
        }
        try {
            return LocalDateTime.of(
                            year,
                            Integer.parseInt(s.substring(5, 7)),
                            Integer.parseInt(s.substring(8, 10)),
                            Integer.parseInt(s.substring(11, 13)),
                            Integer.parseInt(s.substring(14, 16)),
                            Integer.parseInt(s.substring(17, 19)))
                    .toEpochSecond(ZoneOffset.UTC);
        } catch (DateTimeException e) {
            throw Unclean.INSTANCE;
        }
    }

    /**
     * A JSON string holding a plain decimal ({@code -?digits(.digits)?}) of at most 15
     * significant digits, not below 1e-5 unless zero; returned as orjson writes the double
     * Python reads from it (leading zeros of the integer part and trailing zeros of the
     * fraction dropped, at least one digit each side of the point).
     */
    private static String decimal(JsonNode node) throws Unclean {
        String s = text(node);
        int n = s.length();
        if (n == 0 || n > 40) {
            throw Unclean.INSTANCE;
        }
        int i = s.charAt(0) == '-' ? 1 : 0;
        int dot = s.indexOf('.');
        int intEnd = dot < 0 ? n : dot;
        if (intEnd == i || !digits(s, i, intEnd) || (dot >= 0 && (dot == n - 1 || !digits(s, dot + 1, n)))) {
            throw Unclean.INSTANCE;
        }
        int intStart = i;
        while (intStart < intEnd - 1 && s.charAt(intStart) == '0') {
            intStart++;
        }
        String intPart = s.substring(intStart, intEnd);
        String frac = dot < 0 ? "" : s.substring(dot + 1);
        int fracEnd = frac.length();
        while (fracEnd > 0 && frac.charAt(fracEnd - 1) == '0') {
            fracEnd--;
        }
        frac = fracEnd == 0 ? "0" : frac.substring(0, fracEnd);
        int significant;
        if (intPart.equals("0")) {
            int zeros = 0;
            while (zeros < frac.length() && frac.charAt(zeros) == '0') {
                zeros++;
            }
            if (zeros == frac.length()) {
                significant = 0; // zero
            } else {
                if (zeros > MAX_LEADING_FRACTION_ZEROS) {
                    throw Unclean.INSTANCE;
                }
                significant = frac.length() - zeros;
            }
        } else {
            significant = intPart.length() + (frac.equals("0") ? 0 : frac.length());
        }
        if (significant > MAX_DIGITS) {
            throw Unclean.INSTANCE;
        }
        return (i == 1 ? "-" : "") + intPart + "." + frac;
    }

    private static boolean digits(String s, int from, int to) {
        for (int k = from; k < to; k++) {
            char c = s.charAt(k);
            if (c < '0' || c > '9') {
                return false;
            }
        }
        return true;
    }

    /**
     * For tests: the measure table as the first argument (a file, one measure a line),
     * then one raw message a line on stdin; one line out per message: {@code slow}, or the
     * readings as a JSON array of [event ms, key, Reading JSON, value].
     */
    public static void main(String[] args) throws IOException {
        String table = new String(java.nio.file.Files.readAllBytes(java.nio.file.Paths.get(args[0])), StandardCharsets.UTF_8);
        FastSplit split = new FastSplit(table);
        ObjectMapper json = new ObjectMapper();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        PrintStream out = new PrintStream(System.out, false, "UTF-8");
        String line;
        while ((line = in.readLine()) != null) {
            String message = json.readValue(line, String.class); // each line a JSON string
            List<Row> rows = split.split(message);
            if (rows == null) {
                out.println("slow");
                continue;
            }
            List<Object[]> plain = new ArrayList<>();
            for (Row r : rows) {
                plain.add(new Object[] {r.getField(0), r.getField(1), r.getField(2), r.getField(3)});
            }
            out.println(json.writeValueAsString(plain));
        }
        out.flush();
    }
}
